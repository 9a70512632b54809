"""The chest-cavity crop: components, box, QC flags and fallbacks, in TensorFlow ops."""
import numpy as np
import pytest
import tensorflow as tf

from cardio.imaging import crop


def _lungs(size=256, left=(60, 40, 200, 110), right=(60, 150, 200, 220)):
    mask = np.zeros((size, size), np.float32)
    for y0, x0, y1, x1 in (left, right):
        if y1 > y0:
            mask[y0:y1, x0:x1] = 1.0
    return mask


def test_components_are_labelled_separately():
    mask = np.zeros((16, 16), bool)
    mask[1:5, 1:5] = True
    mask[8:15, 9:12] = True
    mask[8, 2] = True
    labels = crop.label_components(tf.constant(mask)).numpy()
    assert len(np.unique(labels[mask])) == 3
    assert np.all(labels[~mask] == 0)
    # Diagonal neighbours join (8-connectivity).
    diagonal = np.zeros((6, 6), bool)
    diagonal[[0, 1, 2], [0, 1, 2]] = True
    assert len(np.unique(crop.label_components(tf.constant(diagonal)).numpy()[diagonal])) == 1


def test_box_spans_both_lungs_with_margin_and_no_flags():
    box, flags = crop.lung_box(tf.constant(_lungs()))
    y0, x0, y1, x1 = box.numpy()
    assert not flags.numpy().any()
    assert y0 < 60 / 256 and y1 > 200 / 256 and x0 < 40 / 256 and x1 > 220 / 256
    assert y0 > 50 / 256 and x1 < 232 / 256


def test_small_noise_is_removed_and_third_component_ignored():
    mask = _lungs()
    mask[5:8, 5:8] = 1.0            # noise speck far outside
    mask[230:250, 120:140] = 1.0    # a third, smaller component (e.g. a bowel gas blob)
    box, flags = crop.lung_box(tf.constant(mask))
    y0, x0, y1, x1 = box.numpy()
    assert not flags.numpy().any()
    assert y0 > 40 / 256 and y1 < 215 / 256


@pytest.mark.parametrize("mask,flag", [
    (np.zeros((256, 256), np.float32), "empty_mask"),
    (_lungs(right=(0, 0, 0, 0)), "one_lung"),
    (_lungs(left=(100, 60, 140, 90), right=(100, 150, 140, 180)), "area_out_of_range"),
    (_lungs(left=(10, 10, 250, 20), right=(10, 30, 250, 40)), "aspect_out_of_range"),
])
def test_implausible_masks_are_flagged_and_fall_back_to_a_centre_crop(mask, flag):
    box, flags = crop.lung_box(tf.constant(mask))
    raised = {name for name, on in zip(crop.QC_FLAGS, flags.numpy()) if on}
    assert flag in raised
    np.testing.assert_allclose(box.numpy(), [0.1, 0.1, 0.9, 0.9], atol=1e-6)


def test_crop_is_deterministic_and_resizes():
    image = tf.random.stateless_uniform([300, 280, 1], seed=[1, 2])
    box, _ = crop.lung_box(tf.constant(_lungs()))
    a = crop.crop_and_resize(image, box, 224)
    b = crop.crop_and_resize(image, box, 224)
    assert a.shape == (224, 224, 1)
    np.testing.assert_array_equal(a, b)
