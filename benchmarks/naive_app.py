"""The naive peer of `make bench-query`: the same job done the way a user would first write it.

One Flask process (its own threaded server): the upload is written to a temporary file,
loaded with `keras.utils.load_img` (resized to 224², stretched, no letterbox), run through
`model.predict` one request at a time, searched in Milvus Lite (FLAT, the in-process
engine a notebook uses), and the hits' metadata read from PostgreSQL with one SQL query.
The model is the same Keras ResNet-50 with the same seeded weights as the embedder's
`random:42`. Nothing here is tuned, and nothing is sabotaged: it is the tutorial's shape.

    python naive_app.py index IMAGES_CSV MILVUS_DB POSTGRES_URL   # embed and store the images
    python naive_app.py serve PORT MILVUS_DB POSTGRES_URL
"""

from __future__ import annotations

import csv
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import psycopg
from flask import Flask, jsonify, request
from keras.applications.resnet50 import ResNet50, preprocess_input
from pymilvus import DataType, MilvusClient

COLLECTION = "images"
SEED = 42


def load_model() -> keras.Model:
    keras.utils.set_random_seed(SEED)  # as the embedder builds random:42
    return ResNet50(include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3))


def embed_file(model: keras.Model, path: str) -> list[float]:
    image = keras.utils.load_img(path, target_size=(224, 224))
    batch = preprocess_input(keras.utils.img_to_array(image)[np.newaxis])
    vector = model.predict(batch, verbose=0)[0]
    return [float(x) for x in vector / np.linalg.norm(vector)]


def index(labels_csv: Path, milvus_db: str, postgres_url: str) -> None:
    model = load_model()
    milvus = MilvusClient(milvus_db)
    if milvus.has_collection(COLLECTION):
        milvus.drop_collection(COLLECTION)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2048)
    params = MilvusClient.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    milvus.create_collection(COLLECTION, schema=schema, index_params=params)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS images")
        db.execute(
            "CREATE TABLE images (id bigint PRIMARY KEY, external_id text, patient_id text, "
            "age int, sex text, view_position text, findings text[])"
        )
        rows = list(csv.DictReader(labels_csv.open(newline="")))
        for i, row in enumerate(rows, start=1):
            vector = embed_file(model, str(labels_csv.parent / row["path"]))
            milvus.insert(COLLECTION, [{"id": i, "vector": vector}])
            findings = [f for f in row["finding_labels"].split("|") if f and f != "No Finding"]
            db.execute(
                "INSERT INTO images VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    i,
                    row["image_index"],
                    row["patient_id"],
                    int(row["patient_age"]),
                    row["patient_gender"],
                    row["view_position"],
                    findings,
                ),
            )
    milvus.close()


def create_app(milvus_db: str, postgres_url: str) -> Flask:
    app = Flask(__name__)
    model = load_model()
    milvus = MilvusClient(milvus_db)
    milvus.load_collection(COLLECTION)  # a reopened collection starts released
    db = psycopg.connect(postgres_url, autocommit=True)
    db_lock = threading.Lock()  # one connection, shared by the server's threads

    @app.post("/search")
    def search() -> Any:
        upload = request.files["image"]
        k = int(request.form.get("k", 10))
        with tempfile.NamedTemporaryFile(suffix=Path(upload.filename or "x.png").suffix) as temp:
            upload.save(temp.name)
            vector = embed_file(model, temp.name)
        hits = milvus.search(COLLECTION, data=[vector], limit=k, search_params={"metric_type": "COSINE"})[0]
        ids = [int(hit["id"]) for hit in hits]
        with db_lock:
            rows = db.execute(
                "SELECT id, external_id, patient_id, age, sex, view_position, findings FROM images "
                "WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
        metadata = {row[0]: row for row in rows}
        return jsonify(
            results=[
                {
                    "rank": rank,
                    "score": float(hit["distance"]),
                    "image": {
                        "id": int(hit["id"]),
                        "external_id": metadata[hit["id"]][1],
                        "patient_id": metadata[hit["id"]][2],
                        "age": metadata[hit["id"]][3],
                        "sex": metadata[hit["id"]][4],
                        "view_position": metadata[hit["id"]][5],
                        "findings": metadata[hit["id"]][6],
                    },
                }
                for rank, hit in enumerate(hits, start=1)
                if hit["id"] in metadata
            ]
        )

    @app.get("/ready")
    def ready() -> Any:
        return jsonify(status="ready")

    return app


def main() -> None:
    command, *rest = sys.argv[1:]
    if command == "index":
        index(Path(rest[0]), rest[1], rest[2])
    elif command == "serve":
        port, milvus_db, postgres_url = int(rest[0]), rest[1], rest[2]
        create_app(milvus_db, postgres_url).run(host="127.0.0.1", port=port, threaded=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
