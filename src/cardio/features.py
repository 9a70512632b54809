"""Every feature name, written once.

The schema (`schemas/`), the converters, the trainer, the evaluator's slices and the serving
signature all import these names, so a rename happens in exactly one place.
"""

IMAGE = "image"            # encoded PNG (8- or 16-bit, MONOCHROME2) or 8-bit JPEG bytes
LABEL = "label"            # 1 = cardiomegaly, 0 = normal
IMAGE_ID = "image_id"      # salted hash of the source's image name (file names can carry MRNs)
PATIENT_ID = "patient_id"  # salted hash of the source's patient identifier, never the raw id
SITE = "site"              # acquisition site; the external site is its own split and slice
SEX = "sex"                # "F", "M" or "unknown"
AGE = "age"                # age in years at acquisition; absent when unknown
AGE_BAND = "age_band"      # slicing band derived from AGE, "unknown" when AGE is absent
VIEW = "view"              # projection, "PA" for the study's cohort
IMAGE_HEIGHT = "image_height"  # of the stored PNG, in pixels: watched for drift between spans
IMAGE_WIDTH = "image_width"
BIT_DEPTH = "bit_depth"        # of the stored PNG (8 or 16): a site exporting 8-bit shows here

# Ground truth that only synthetic radiographs carry (optional in the schema).
CTR = "ctr"                # cardiothoracic ratio the image was drawn with
LUNG_MASK = "lung_mask"    # PNG, 255 inside the lungs
HEART_MASK = "heart_mask"  # PNG, 255 inside the heart

SEX_VALUES = ("F", "M", "unknown")
UNKNOWN = "unknown"

# Subgroups every site is sliced by (TFMA's slices, the comparison's fairness review).
SUBGROUPS = (SEX, AGE_BAND, VIEW)

# Age bands used for slicing (upper bounds exclusive); the last band is open-ended.
AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))


def age_band(age):
    """Returns the slicing band for an age in years, or "unknown" for None."""
    if age is None:
        return UNKNOWN
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    raise ValueError(f"age {age} is outside 0-200 years")


# Splits, as ExampleGen names them. `external` is the independent site: it gates and reports,
# never trains and never chooses among models.
TRAIN, VALIDATION, TEST, EXTERNAL = "train", "validation", "test", "external"
SPLITS = (TRAIN, VALIDATION, TEST, EXTERNAL)

# Serving and evaluation outputs.
PROBABILITY = "probability"
PREDICTED_LABEL = "predicted_label"

# Written by the LungCrop stage beside the cropped image, and returned by the serving signature.
CROP_BOX = "crop_box"      # [y0, x0, y1, x1] as fractions of the original image
CROP_QC = "crop_qc"        # the QC flags raised (cardio.imaging.crop.QC_FLAGS); empty when plausible

# Returned by serving_default beside the probability when the export embeds the heart U-Net
# (cardio.imaging.ctr): the measured cardiothoracic ratio (named as the synthetic ground truth,
# CTR), the heart's and the lung fields' boxes whose widths it divides, and its QC flags.
HEART_BOX = "heart_box"    # [y0, x0, y1, x1] fractions of the original image
THORAX_BOX = "thorax_box"  # the two lung fields' box, same layout
CTR_QC = "ctr_qc"          # one column per name in cardio.imaging.ctr.CTR_QC_FLAGS

# The exported SavedModel's interface: its signatures, their inputs, and the files beside them.
SERVING_DEFAULT = "serving_default"     # raw encoded radiographs -> probability, label, crop
SERVING_EXAMPLES = "serving_examples"   # stored tf.Examples (already cropped), for TFMA
SERVING_CLASSIFY = "classify"           # TF Serving's Classify API
IMAGE_BYTES = "image_bytes"             # serving_default's input
CLASS_NAMES = ("normal", "cardiomegaly")
ASSETS_EXTRA = "assets.extra"           # TF Serving's directory for files beside the SavedModel
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "cardio_metadata.json"  # threshold, sizes, lineage: what the export was made with
MODEL_CARD_FILE = "MODEL_CARD.md"

# A log record attribute (`extra={PROGRESS: True}`): the local runner shows such INFO lines, the
# progress of long stages, among the component lines it keeps.
PROGRESS = "cardio_progress"
