-- Images, their bytes, and their indexing state per embedding model.

CREATE TABLE images (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256        char(64)    NOT NULL UNIQUE,
    mime_type     text        NOT NULL,
    width         integer     NOT NULL CHECK (width > 0),
    height        integer     NOT NULL CHECK (height > 0),
    byte_size     integer     NOT NULL CHECK (byte_size > 0),
    dataset       text        NOT NULL,
    external_id   text,
    patient_id    text,
    study         integer     CHECK (study >= 0),
    age           integer     CHECK (age BETWEEN 0 AND 130),
    sex           char(1)     CHECK (sex IN ('M', 'F', 'O')),
    view_position text,
    findings      text[]      NOT NULL DEFAULT '{}',
    extra         jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX images_dataset_idx ON images (dataset, id);
CREATE INDEX images_patient_idx ON images (patient_id, id);
CREATE INDEX images_external_id_idx ON images (dataset, external_id);
CREATE INDEX images_findings_idx ON images USING gin (findings);

-- Bytes apart from metadata, so that listing and filtering never read them.
CREATE TABLE image_files (
    image_id       bigint PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    original       bytea NOT NULL,
    thumbnail      bytea NOT NULL,
    thumbnail_mime text  NOT NULL
);

CREATE TABLE index_states (
    image_id   bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    model_id   text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('pending', 'indexed', 'failed')),
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_id),
    CHECK ((state = 'failed') = (reason IS NOT NULL))
);

CREATE INDEX index_states_model_idx ON index_states (model_id, state, image_id);
