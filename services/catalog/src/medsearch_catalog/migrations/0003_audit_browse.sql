-- Listing images (browse, pending) shows their metadata: the audit trail records it too.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check CHECK (action IN (
    'search', 'similar', 'view_image', 'browse', 'add_image', 'delete_image', 'reindex', 'sign_in',
    'sign_out', 'token_create', 'token_revoke', 'refused', 'audit_read'));
