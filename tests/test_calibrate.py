import numpy as np
import pytest

from pipeline.dataquality.calibrate import (
    calibrate,
    copy_pairs,
    copy_similarities,
    distinct_similarities,
    near_copy_clusters,
    pair_similarity,
    search,
    view_neighbours,
)
from pipeline.finetuning.autosize import backbone_input_size, data_profile, resolve_image_size
from pipeline.modality.image.signals import (
    COPY_KINDS,
    CopyModel,
    _jpeg_tiles,
    aligned_views,
    make_copies,
    phash,
    thumbnails,
    tiny_pixels,
)


def _textures(n=60, size=64, seed=0, blur=3.0):
    """Distinct smooth random images (tiny, synthetic)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noise = gaussian_filter(rng.normal(size=(size, size, 3)), (blur, blur, 0))
        out.append(np.clip(128 + 60 * noise / noise.std(), 0, 255).astype(np.uint8))
    return out


def test_auto_size_follows_data_and_backbone():
    assert resolve_image_size("auto", backbone_size=224, short_sides=[8] * 5)[0] == 48
    assert resolve_image_size("auto", backbone_size=224, short_sides=[8] * 5, upscale=8)[0] == 64
    size, reason = resolve_image_size("auto", backbone_size=224, short_sides=[300, 500, 375])
    assert size == 224 and "backbone" in reason
    # photos get the test size, never more than their own short side
    assert resolve_image_size("auto", backbone_size=224, short_sides=[375] * 3,
                              test_size=288)[0] == 288
    assert resolve_image_size("auto", backbone_size=224, short_sides=[250] * 3,
                              test_size=288)[0] == 240
    assert data_profile([375], 224) == "photo" and data_profile([8], 224) == "small"
    assert data_profile([112], 224) == "photo" and data_profile([100], 224) == "small"
    assert resolve_image_size(96, backbone_size=224, short_sides=[8])[0] == 96  # explicit wins
    with pytest.raises(ValueError):
        resolve_image_size("big", backbone_size=224, short_sides=[8])


def test_backbone_input_size_reads_timm_config():
    assert backbone_input_size("timm", "tf_efficientnet_lite0")[:2] == (224, 288)  # x 288/224
    assert backbone_input_size("timm", "resnet50")[:2] == (224, 288)  # timm's test_input_size


def test_copies_are_seeded_and_of_every_kind():
    images = _textures(3)
    a, source, kinds = make_copies(images, seed=1)
    b, _, _ = make_copies(images, seed=1)
    assert len(a) == 3 * len(COPY_KINDS) and list(source[:len(COPY_KINDS)]) == [0] * 5
    assert set(kinds) == set(COPY_KINDS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(c.dtype == np.uint8 and c.ndim == 3 for c in a)


def test_calibration_finds_a_planted_copy_and_not_a_distinct_image():
    images = _textures(60)
    planted, _, _ = make_copies([images[0]], kinds=["combined"], seed=7)
    data = images + planted  # row 60 is a near copy of row 0
    copies, source, kinds = make_copies(images[:20], seed=0)
    signals = [thumbnails(data), phash(data)]
    distinct, owner = distinct_similarities(signals, hashes=None, k=1)
    cal = calibrate(copy_similarities(signals, [thumbnails(copies), phash(copies)], source),
                    distinct, owner=owner, signals=("thumbnail", "phash"), kinds=kinds,
                    max_false_rate=0.05)  # 61 images: one pair = 2 of 61 images
    assert cal.separable and cal.recall >= 0.9 and set(cal.recall_by_kind) == set(COPY_KINDS)
    ids = [f"{i:03d}" for i in range(len(data))]
    clusters = near_copy_clusters(signals, cal, k=5, exact_max=1000, probes=4, order=ids,
                                  valid=np.ones(len(data), bool))
    assert clusters[0] == clusters[60] == "000"
    assert sum(c is not None for c in clusters) == 2  # no distinct image joins
    # the leakage audit: the copy as a val row against the originals as train rows
    rows, cols, _ = copy_pairs([s[60:] for s in signals], [s[:60] for s in signals], cal)
    assert list(zip(rows, cols)) == [(0, 0)]
    assert set(cal.metrics()) >= {"near_duplicate_estimated_recall",
                                  "near_duplicate_estimated_false_match_rate"}


def test_cannot_separate_is_reported():
    rng = np.random.default_rng(0)
    copies = rng.uniform(0.5, 0.9, size=(50, 1))  # copies no more alike than distinct pairs
    distinct = rng.uniform(0.5, 0.9, size=(200, 1))
    cal = calibrate(copies, distinct, signals=("embedding",))
    assert not cal.separable and "CANNOT SEPARATE" in cal.note and cal.recall < 0.9
    # nor does the rule then call most images copies of their neighbours: at most half
    # the images are taken to have a real copy, so the loose settings count as false
    assert cal.copy_share <= 0.5 and cal.fires(distinct).mean() <= 0.05


def test_a_kind_of_copy_the_rule_misses_is_named_in_the_note_and_metrics():
    """Copies of four kinds are easy, the combined ones as alike as distinct pairs: the
    rule is separable overall, and the combined kind is named as the one it misses."""
    rng = np.random.default_rng(0)
    kinds = np.repeat(["jpeg", "resize", "crop", "brightness", "combined"], 40)
    copies = rng.uniform(0.97, 1.0, size=(200, 1))
    copies[kinds == "combined"] = rng.uniform(0.5, 0.9, size=(40, 1))
    distinct = rng.uniform(0.5, 0.9, size=(400, 1))
    cal = calibrate(copies, distinct, signals=("embedding",), kinds=kinds,
                    min_recall=0.75)
    assert cal.separable and cal.missed_kinds() == {"combined": cal.recall_by_kind["combined"]}
    assert "combined (estimated recall 0." in cal.note and "mostly be missed" in cal.note
    assert cal.metrics()["near_duplicate_missed_kinds"] == "combined"
    from pipeline.reporting import report
    html = "".join(report.resolved_html(
        {"embed_image_size": 64} | cal.metrics(), 64, "auto", {}))
    assert "near copies made by combined will mostly be missed" in html


def test_shared_share_estimate_keeps_a_weak_signal_from_claiming_every_pair():
    """200 images, 10 of them with a real copy (5 pairs); a signal that separates
    copies and one that does not. The weak signal reaches recall 0.75 only where nearly
    every image fires, so alone it puts the share of real copies near 1 and its false
    matches near 0; estimated once for the data, the share comes from the good signal."""
    rng = np.random.default_rng(0)
    n, real = 200, 10
    copy_sims = np.column_stack([rng.uniform(0.95, 1.0, 500), rng.uniform(0.5, 0.9, 500)])
    distinct = np.column_stack([rng.uniform(0.5, 0.9, n), rng.uniform(0.5, 0.9, n)])
    distinct[:real, 0] = rng.uniform(0.95, 1.0, real)  # the owners of real copies
    options = {"floor_recall": 0.75, "allowance": 1.0}
    weak = calibrate(copy_sims[:, [1]], distinct[:, [1]], signals=("weak",), **options)
    assert weak.copy_share >= 0.5  # alone, the weak signal's estimate is useless
    cal = calibrate(copy_sims, distinct, signals=("good", "weak"), shared_share=True,
                    **options)
    assert 0.04 <= cal.copy_share <= 0.08  # the truth is 0.05
    assert np.isfinite(cal.thresholds[0]) and cal.thresholds[1] == np.inf
    assert cal.separable and cal.recall >= 0.9 and cal.false_match_rate <= 0.002


def test_aligned_views_find_cropped_and_shrunk_copies_of_tiny_images():
    """On 8 x 8 images a one-pixel crop moves everything by an eighth: the plain
    thumbnails miss the copy, the aligned views line it up again."""
    images = _textures(80, size=8, blur=1.0)
    crop, _, _ = make_copies([images[0]], kinds=["crop"], seed=3)
    shrunk, _, _ = make_copies([images[1]], kinds=["resize"], seed=3)
    assert crop[0].shape[:2] != (8, 8) and shrunk[0].shape[:2] != (8, 8)
    data = images + crop + shrunk  # rows 80, 81: copies of rows 0, 1
    views = aligned_views(data)
    assert views.shape == (82, 48, 64)
    copy_sims = pair_similarity(views, views, [0, 1], [80, 81])
    assert copy_sims.min() > 0.999  # the views hold the copy's exact crop and size
    index, sims = view_neighbours(views, k=3, exact_max=1000, probes=4)
    assert index[80, 0] == 0 and index[81, 0] == 1 and index[0, 0] == 80
    # above exact_max: the k-means cell search over the views finds them too
    cell_index, cell_sims = view_neighbours(views, k=3, exact_max=10, probes=2)
    assert cell_index[80, 0] == 0 and cell_index[81, 0] == 1
    assert np.allclose(cell_sims[[80, 81], 0], sims[[80, 81], 0])
    distinct_best = np.delete(sims[:, 0], [0, 1, 80, 81])
    assert distinct_best.max() < copy_sims.min() - 0.005  # distinct images stay below
    plain = thumbnails(data)
    assert float(plain[0] @ plain[80]) < 0.95  # to plain thumbnails it is a distinct image
    # the split audit on views: the copies as val rows against the originals as train
    cal = calibrate(copy_sims[:, None], sims[:, :1].astype(np.float64), signals=("aligned",),
                    max_false_rate=0.05)
    rows, cols, _ = copy_pairs([views[80:]], [views[:80]], cal)
    assert list(zip(rows, cols)) == [(0, 0), (1, 1)]


def test_copy_model_finds_a_combined_copy_of_a_tiny_image():
    """Crop, resize, brightness and JPEG together on an 8 x 8 image: the copy model
    re-makes the copy from the original (crop, resize to the copy's size, JPEG) and
    scores it above every distinct pair; images larger than 16 px match nothing."""
    images = _textures(80, size=8, blur=1.0)
    copy, _, _ = make_copies([images[0]], kinds=["combined"], seed=5)
    assert copy[0].shape[:2] != (8, 8)
    data = images + copy  # row 80: a copy of row 0
    packed = tiny_pixels(data)
    assert packed.shape == (81, 258) and tuple(packed[80, :2]) == copy[0].shape[:2]
    model = CopyModel(packed, aligned_views(data))
    index, sims = search([model], k=3, exact_max=1000)[0]
    assert index[80, 0] == 0 and index[0, 0] == 80
    copy_sim = float(pair_similarity(model, model, [80], [0])[0])
    assert copy_sim == pytest.approx(float(pair_similarity(model, model, [0], [80])[0]))
    distinct_best = np.delete(sims[:, 0], [0, 80])
    assert copy_sim > 0.99 and distinct_best.max() < copy_sim - 0.005
    # the split audit: the copy as a val row against the originals as train rows
    cal = calibrate(np.array([[copy_sim]]), distinct_best[:, None].astype(np.float64),
                    signals=("copy_model",), max_false_rate=0.05)
    rows, cols, _ = copy_pairs([model[np.array([80])]], [model[np.arange(80)]], cal)
    assert list(zip(rows, cols)) == [(0, 0)]
    # larger images are not modelled: zero rows, similarity 0, no work in the search
    big = _textures(3, size=32)
    big_model = CopyModel(tiny_pixels(big), aligned_views(big))
    assert not tiny_pixels(big).any() and not big_model.any()
    assert pair_similarity(big_model, big_model, [0, 1], [1, 2]).tolist() == [0.0, 0.0]
    assert search([big_model], k=1, exact_max=10)[0][1].tolist() == [[0.0]] * 3


def test_jpeg_tiles_match_one_encode_per_tile():
    """The copy model's batched JPEG round trip (one mosaic per quality) gives each tile
    exactly what encoding it alone gives, for every tiny size."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (h, w), dtype=np.uint8)
             for h in range(1, 17, 3) for w in range(1, 17, 2)] * 3
    for quality in (50, 80):
        alone = []
        for tile in tiles:
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
            alone.append(np.asarray(Image.open(buffer)))
        batched = _jpeg_tiles(tiles, quality, columns=7)  # several rows of the mosaic
        assert all(np.array_equal(x, y) for x, y in zip(alone, batched))
