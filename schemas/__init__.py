"""TFRecord schemas, read by ImportSchemaGen. `SCHEMA_FILE` is the radiograph schema."""
import os

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(SCHEMA_DIR, "schema.pbtxt")
