"""TFRecord schemas, read by ImportSchemaGen.

`schema.pbtxt` is the radiograph schema. Its `site` domain belongs to the deployment, not to the
code: `render` writes a copy whose site domain is the configured sites and whose view domain is the
configured views (`views`, PA for the study), so another hospital's site names and projections
validate and an unknown one is an anomaly.

May import: nothing of the project.
"""
import os

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(SCHEMA_DIR, "schema.pbtxt")
CROP_FEATURES_FILE = os.path.join(SCHEMA_DIR, "crop_features.pbtxt")


def render(sites, path: str, base: str = SCHEMA_FILE, cropped: bool = False,
           views=("PA",)) -> str:
    """Writes the schema with `sites` as the site domain and `views` as the view domain to
    `path` (local or remote); returns it.
    `cropped` adds the crop stage's features: the schema of the LungCrop stage's output."""
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    if not sites:
        raise ValueError("at least one site is required")
    schema = text_format.Parse(open(base).read(), schema_pb2.Schema())
    if cropped:
        text_format.Merge(open(CROP_FEATURES_FILE).read(), schema)
    if not views:
        raise ValueError("at least one view is required")
    for name, values in (("site", sites), ("view", views)):
        domain = next(d for d in schema.string_domain if d.name == name)
        del domain.value[:]
        domain.value.extend(sorted(set(values)))
    text = text_format.MessageToString(schema)
    tf.io.gfile.makedirs(os.path.dirname(path))
    if not tf.io.gfile.exists(path) or tf.io.gfile.GFile(path).read() != text:
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
    return path
