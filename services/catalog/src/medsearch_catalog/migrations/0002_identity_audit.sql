-- Who may use MedSearch (API tokens, browser sessions) and what they did (the audit trail).
-- Secrets are never stored: only their sha256, looked up by equality.

CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    role         text        NOT NULL CHECK (role IN ('reader', 'editor', 'admin')),
    secret_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

CREATE TABLE sessions (
    id          bigserial   PRIMARY KEY,
    secret_hash bytea       NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    token_id    bigint      REFERENCES api_tokens (id),
    subject     text        NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 200),
    role        text        NOT NULL CHECK (role IN ('reader', 'editor', 'admin')),
    csrf_hash   bytea       NOT NULL CHECK (octet_length(csrf_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz
);

CREATE INDEX sessions_token_idx ON sessions (token_id);

CREATE TABLE audit_events (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200 AND actor !~ '[[:cntrl:]]'),
    role       text        CHECK (role IN ('reader', 'editor', 'admin')),
    action     text        NOT NULL CHECK (action IN (
        'search', 'similar', 'view_image', 'add_image', 'delete_image', 'reindex', 'sign_in',
        'sign_out', 'token_create', 'token_revoke', 'refused', 'audit_read')),
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    -- No foreign key: a deleted image's history stays.
    image_id   bigint,
    result_ids bigint[]    CHECK (cardinality(result_ids) <= 1000),
    request_id text        CHECK (char_length(request_id) BETWEEN 1 AND 200 AND request_id !~ '[[:cntrl:]]'),
    detail     text        CHECK (char_length(detail) <= 500 AND detail !~ '[[:cntrl:]]')
);

CREATE INDEX audit_events_at_idx ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, at DESC, id DESC);
CREATE INDEX audit_events_action_idx ON audit_events (action, at DESC, id DESC);
CREATE INDEX audit_events_image_idx ON audit_events (image_id, at DESC, id DESC) WHERE image_id IS NOT NULL;

-- Append-only, enforced by PostgreSQL itself: no update, delete or truncate of the trail.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
