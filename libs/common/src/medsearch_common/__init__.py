"""What two or more MedSearch services share: settings, errors, HTTP app and client, logs, metrics."""
