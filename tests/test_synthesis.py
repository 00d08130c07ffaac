"""Perlin masks, texture ops, the blend, foreground estimate, extended anomalies, textures and their fallback."""
import logging

import cv2
import numpy as np
import pytest

from prnet.datasets.synthesis import (TEXTURE_OPS, augment_texture, blend, context_offset, estimate_foreground,
                                      extended_anomaly, is_greyscale, jitter_image, large_mask, perlin_anomaly,
                                      perlin_mask, perlin_noise, scratch_anomaly, scratch_mask, shade_anomaly,
                                      shuffle_blocks, spot_anomaly, spot_mask, structure_anomaly, swap_anomaly,
                                      to_grey)
from prnet.datasets import synthesis
from prnet.datasets.textures import TextureSource


def rng(*k):
    return np.random.default_rng(list(k) or 0)


def test_perlin_noise_is_smooth_seeded_and_any_size():
    a = perlin_noise((48, 40), (4, 8), rng(1))
    assert a.shape == (48, 40) and a.dtype == np.float32
    assert np.array_equal(a, perlin_noise((48, 40), (4, 8), rng(1)))
    assert not np.array_equal(a, perlin_noise((48, 40), (4, 8), rng(2)))
    assert np.abs(a).max() <= 1.0 + 1e-5 and a.std() > 0.05
    assert np.abs(np.diff(a, axis=0)).max() < 0.5  # gradient noise: neighbours are close
    big = perlin_noise((64, 64), (1, 1), rng(3))
    assert np.allclose(big[0, 0], 0, atol=1e-6)  # zero on the lattice points


def test_perlin_mask_never_empty_and_respects_region():
    for k in range(30):
        m = perlin_mask((32, 48), rng(k), scale_max=5)
        assert m.shape == (32, 48) and m.any() and set(np.unique(m)) <= {0.0, 1.0}
    region = np.zeros((32, 32), bool)
    region[10:14, 10:14] = True
    for k in range(10):
        m = perlin_mask((32, 32), rng(k), within=region, max_tries=3)
        assert m.any() and not m[~region].any()


def test_blend_formula_and_unchanged_outside():
    r = rng(0)
    x = r.random((16, 16, 3), dtype=np.float32)
    t = r.random((16, 16, 3), dtype=np.float32)
    m = (r.random((16, 16)) > 0.5).astype(np.float32)
    beta = 0.3
    out = blend(x, t, m, beta)
    ref = x * (1 - m[..., None]) + (1 - beta) * x * m[..., None] + beta * t * m[..., None]
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert np.array_equal(out[m == 0], x[m == 0])
    assert np.allclose(blend(x, t, m, 0.0), x)


class _Flat:
    """A texture source giving one colour, to check the colour space of the blend."""

    def __init__(self, value):
        self.value = value

    def sample_uint8(self, rng, hw):
        return np.full(hw + (3,), self.value, np.uint8)


def test_perlin_anomaly_changes_only_the_mask_and_stays_in_range():
    x = rng(5).random((32, 32, 3), dtype=np.float32) * 0.5 + 0.25
    for k in range(10):
        out, m = perlin_anomaly(x, _Flat(128), rng(k), beta_max=0.8)
        assert m.any() and out.shape == x.shape and out.dtype == np.float32
        assert np.array_equal(out[m == 0], x[m == 0])
        assert 0 <= out.min() and out.max() <= 1


def _stays_inside_its_region(make_mask):
    """A mask drawn `within` a region is non-empty and inside it; for a one-pixel region, after `max_tries` empty
    draws, the mask is that pixel (hit by a draw or picked by the fallback), never empty."""
    region = np.zeros((64, 64), bool)
    region[40:, :20] = True
    for k in range(10):
        m = make_mask((64, 64), rng(k), within=region)
        assert m.any() and not m[~region].any()
    dot = np.zeros((64, 64), bool)
    dot[3, 60] = True
    assert np.array_equal(make_mask((64, 64), rng(0), within=dot, max_tries=2), dot.astype(np.float32))


def test_scratch_masks_are_thin_curves_seeded_and_inside_the_region():
    kernel = np.ones((9, 9), np.uint8)  # wider than any stroke at 256² (2–6 px)
    for k in range(20):
        m = scratch_mask((256, 256), rng(k))
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} and m.any()
        assert np.array_equal(m, scratch_mask((256, 256), rng(k)))
        assert m.mean() < 0.08  # a few thin curves, not a blob
        # thin: a 9×9 square fits inside at crossings and sharp turns only
        assert cv2.erode(m.astype(np.uint8), kernel).sum() <= 0.05 * m.sum()
        # long: the curves reach at least 10 % of the diagonal
        ys, xs = np.nonzero(m)
        assert np.hypot(np.ptp(ys), np.ptp(xs)) >= 0.1 * np.hypot(256, 256) - 6
    wide = [scratch_mask((512, 512), rng(k)).sum() / scratch_mask((256, 256), rng(k)).sum() for k in range(10)]
    assert 2.5 < np.median(wide) < 6  # stroke width and length both scale with the image (about 4× the pixels)
    _stays_inside_its_region(scratch_mask)


def test_scratch_anomaly_changes_only_its_mask():
    x = rng(5).random((64, 64, 3), dtype=np.float32) * 0.5 + 0.25
    for k in range(5):
        out, m = scratch_anomaly(x, _Flat(0), rng(k), beta_max=0.5)
        assert m.any() and np.array_equal(out[m == 0], x[m == 0])
        assert (np.abs(out - x)[m > 0] > 0.1).all()  # texture 0 at opacity >= 0.5 over values >= 0.25


def test_spot_masks_are_one_small_blob_of_the_stated_area_seeded_and_inside_the_region():
    areas = []
    for k in range(60):
        m = spot_mask((256, 256), rng(k))
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} and m.any()
        assert np.array_equal(m, spot_mask((256, 256), rng(k)))
        ys, xs = np.nonzero(m)
        assert max(np.ptp(ys), np.ptp(xs)) <= np.sqrt(synthesis.SPOT_AREA[1] * 256 * 256 / synthesis.SPOT_FILL) + 1
        areas.append(m.mean())
    # pits of a few pixels up to a few hundred at 256² (0.005-0.5 % of the image, about), many sizes between
    assert min(areas) < 2e-4 and 1.5e-3 < max(areas) < 1e-2 and len(set(np.round(np.log10(areas)))) >= 3
    _stays_inside_its_region(spot_mask)


def test_spot_anomaly_changes_only_its_mask():
    x = rng(5).random((64, 64, 3), dtype=np.float32) * 0.5 + 0.25
    for k in range(5):
        out, m = spot_anomaly(x, _Flat(0), rng(k), beta_max=0.5)
        assert m.any() and m.mean() < 0.05 and np.array_equal(out[m == 0], x[m == 0])
        assert (np.abs(out - x)[m > 0] > 0.1).all()


def test_texture_ops_keep_rgb_uint8_and_texture_is_not_bgr():
    tex = np.zeros((24, 24, 3), np.uint8)
    tex[..., 0] = 220  # red
    tex[..., 1] = np.arange(24, dtype=np.uint8)[None, :] * 4
    for op in TEXTURE_OPS:
        out = op(tex.copy(), rng(0))
        assert out.shape == tex.shape and out.dtype == np.uint8, op.__name__
    aug = augment_texture(tex, rng(1))
    assert aug.shape == tex.shape and aug.dtype == np.uint8
    with pytest.raises(ValueError, match="RGB uint8"):
        augment_texture(tex.astype(np.float32), rng(0))


def test_foreground_estimate_finds_an_object_and_falls_back():
    img = np.full((64, 64, 3), 0.9, np.float32)
    cv2.circle(img, (32, 32), 15, (0.2, 0.3, 0.4), -1)
    fg = estimate_foreground(img)
    assert fg[32, 32] and not fg[2, 2] and 0.1 < fg.mean() < 0.3
    assert estimate_foreground(np.full((64, 64, 3), 0.5, np.float32)).all()  # no object: whole image
    out, m = perlin_anomaly(img, _Flat(0), rng(0), foreground=fg)
    assert m.any() and not m[~fg].any()


def test_extended_anomaly_pastes_only_inside_its_non_empty_mask():
    r = rng(2)
    normal = r.random((32, 32, 3), dtype=np.float32)
    defect = np.zeros((32, 32, 3), np.float32)
    defect[..., 0] = 1.0
    dmask = np.zeros((32, 32), np.float32)
    dmask[12:20, 12:20] = 1
    for k in range(10):
        out, m = extended_anomaly(normal, defect, dmask, rng(k), match_context=False)
        assert m.any() and set(np.unique(m)) <= {0.0, 1.0}
        assert np.array_equal(out[m == 0], normal[m == 0])
        assert out[m > 0][:, 0].mean() > 0.6  # the red defect pixels were pasted (colour jitter is mild)
    a, ma = extended_anomaly(normal, defect, dmask, rng(7), match_context=False)
    b, mb = extended_anomaly(normal, defect, dmask, rng(7), match_context=False)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    with pytest.raises(ValueError, match="empty"):
        extended_anomaly(normal, defect, np.zeros((32, 32), np.float32), rng(0), match_context=False)


def test_extended_anomaly_scale_range_sets_the_pasted_area():
    """The warp's scale is U(scale): a fixed 0.5 pastes about a quarter of the defect's area, a fixed 1 all of it
    (the elastic warp and the rotation move the count by a few pixels); the default is the former U(0.75, 1.25),
    the same draws."""
    normal = np.full((128, 128, 3), 0.5, np.float32)
    defect = np.zeros((128, 128, 3), np.float32)
    dmask = np.zeros((128, 128), np.float32)
    dmask[44:84, 44:84] = 1  # 1600 pixels
    areas = {s: [extended_anomaly(normal, defect, dmask, rng(k), match_context=False, scale=(s, s))[1].sum()
                 for k in range(8)] for s in (0.5, 1.0)}
    assert 0.2 * 1600 < np.median(areas[0.5]) < 0.3 * 1600
    assert 0.9 * 1600 < np.median(areas[1.0]) < 1.1 * 1600
    a, ma = extended_anomaly(normal, defect, dmask, rng(3), match_context=False)
    b, mb = extended_anomaly(normal, defect, dmask, rng(3), match_context=False, scale=(0.75, 1.25))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_context_offset_and_pastes_at_the_level_of_the_new_surroundings():
    # a dark defect (0.1 below its surface) cut from a bright tile (0.8), pasted on a dark tile (0.3)
    bright = np.full((64, 64, 3), 0.8, np.float32)
    dmask = np.zeros((64, 64), np.float32)
    dmask[24:40, 24:40] = 1
    defect = bright.copy()
    defect[dmask > 0] = 0.7
    dark = np.full((64, 64, 3), 0.3, np.float32)
    assert np.allclose(context_offset(dark, defect, dmask), -0.5, atol=1e-6)
    assert np.allclose(context_offset(dark, defect, np.ones((64, 64), np.float32)), 0.0)  # no surroundings: no shift
    valid = np.zeros((64, 64), bool)  # only the warp's valid pixels count
    valid[:, :10] = True
    other = defect.copy()
    other[:, 10:] = 0.0
    assert np.allclose(context_offset(dark, other, dmask, valid), 0.0, atol=1e-6)  # ring ∩ valid is empty
    for k in range(8):
        plain, m = extended_anomaly(dark, defect, dmask, rng(k), match_context=False)
        matched, m2 = extended_anomaly(dark, defect, dmask, rng(k), match_context=True)
        assert np.array_equal(m, m2)  # the same draws: the same warp, the same mask
        assert np.array_equal(matched[m == 0], dark[m == 0])
        inside = matched[m > 0].mean()
        assert plain[m > 0].mean() > 0.45  # plain: the bright tile's defect, brighter than its new surface
        assert 0.1 < inside < 0.3  # matched: darker than the new surface, as the defect was on its own
    big = extended_anomaly(dark, defect, np.ones((64, 64), np.float32), rng(0), match_context=True)[0]
    assert big.mean() > 0.5  # a defect covering everything: nothing to match, pasted as it is


@pytest.mark.parametrize("root", [None, "missing", "empty"])
def test_texture_fallback_warns_and_works(tmp_path, caplog, root):
    if root == "missing":
        root = str(tmp_path / "no_dtd")
    elif root == "empty":
        (tmp_path / "dtd").mkdir()
        root = str(tmp_path / "dtd")
    normal = np.full((40, 40, 3), 0.5, np.float32)
    with caplog.at_level(logging.WARNING, logger="prnet.datasets.textures"):
        src = TextureSource(root, normal_images=lambda r: normal)
    assert src.procedural and any("procedural" in rec.message for rec in caplog.records)
    for k in range(6):
        t = src.sample(rng(k), (32, 48))
        assert t.shape == (32, 48, 3) and t.dtype == np.float32 and 0 <= t.min() and t.max() <= 1


def test_texture_source_reads_dtd_layout_lazily(tmp_path):
    for cls, colour in (("red", (0, 0, 255)), ("blue", (255, 0, 0))):  # BGR on disk
        d = tmp_path / "images" / cls
        d.mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(d / f"{cls}_{i}.jpg"), np.full((50, 70, 3), colour, np.uint8))
    src = TextureSource(str(tmp_path), cache_bytes=32 * 32 * 3 * 2)
    assert len(src.files) == 4 and not src.procedural
    means = [src.sample(rng(k), (32, 32)).reshape(-1, 3).mean(0) for k in range(12)]
    for m in means:  # textures come back RGB: pure red or pure blue
        assert (m[0] > 0.9 and m[2] < 0.1) or (m[2] > 0.9 and m[0] < 0.1)
    assert len(src._cache) <= 2  # bounded cache


def test_grey_textures_and_greyscale_test():
    r = rng(0)
    colour = r.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    g = to_grey(colour)
    assert g.shape == colour.shape and g.dtype == np.uint8 and is_greyscale(g) and not is_greyscale(colour)
    assert np.array_equal(g[..., 0], cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY))
    grey = np.repeat(r.integers(0, 256, size=(24, 24, 1), dtype=np.uint8), 3, axis=2)
    noisy = np.clip(grey.astype(np.int16) + r.integers(-1, 2, size=grey.shape), 0, 255).astype(np.uint8)
    assert is_greyscale(grey) and is_greyscale(noisy) and is_greyscale(grey.astype(np.float32) / 255)
    tinted = grey.copy()
    tinted[..., 0] = np.clip(tinted[..., 0].astype(int) + 20, 0, 255)  # a faint colour cast
    assert not is_greyscale(tinted)


class _Colour:
    def sample_uint8(self, rng, hw):
        return rng.integers(0, 256, size=hw + (3,), dtype=np.uint8)


def test_perlin_anomaly_grey_keeps_a_grey_image_grey_with_the_same_draws():
    img = np.repeat(rng(1).random((48, 48, 1), dtype=np.float32), 3, axis=2)
    for k in range(5):
        out_c, m_c = perlin_anomaly(img, _Colour(), rng(k), beta_max=0.8)
        out_g, m_g = perlin_anomaly(img, _Colour(), rng(k), beta_max=0.8, grey=True)
        assert np.array_equal(m_c, m_g)
        assert is_greyscale(out_g) and np.array_equal(out_g[m_g == 0], img[m_g == 0])
        spread = out_c.max(axis=2) - out_c.min(axis=2)
        assert spread[m_c > 0].max() > 0.02  # the colour version adds colour inside the mask


def test_perlin_texture_opacity_is_draems_one_minus_beta(monkeypatch):
    """DRAEM: x·(1−m) + (1−β)·t·m + β·x·m with β ~ U(0, 0.8), so the texture's opacity is in (0.2, 1]."""
    monkeypatch.setattr(synthesis, "augment_texture", lambda t, r: t)  # the texture as the provider gives it
    x = rng(7).random((32, 32, 3), dtype=np.float32) * 0.5
    t = np.float32(200 / 255)
    opacities = []
    for k in range(40):
        out, m = perlin_anomaly(x, _Flat(200), rng(k), beta_max=0.8)
        a = (out - x)[m > 0] / (t - x[m > 0])
        assert np.allclose(a, a[0], atol=1e-4)  # one opacity per anomaly
        opacities.append(float(a.mean()))
    assert min(opacities) > 0.2 - 1e-4 and max(opacities) <= 1 + 1e-4
    assert min(opacities) < 0.35 and max(opacities) > 0.9  # spread over the whole range


def test_large_mask_covers_the_drawn_area_and_respects_the_region():
    areas = []
    for k in range(40):
        m = large_mask((64, 80), rng(k), area=(0.1, 0.5))
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        areas.append(m.mean())
    areas = np.array(areas)
    assert areas.min() >= 0.09 and areas.max() <= 0.52 and areas.std() > 0.05  # drawn in [0.1, 0.5], not fixed
    assert np.array_equal(large_mask((64, 80), rng(3)), large_mask((64, 80), rng(3)))
    # low frequency: one or two smooth regions, far fewer boundary pixels than DRAEM's Perlin masks at scale 2^5
    edges = lambda m: np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()  # noqa: E731
    fine = np.mean([edges(perlin_mask((64, 80), rng(k), scale_max=5)) / max(perlin_mask((64, 80), rng(k)).sum(), 1)
                    for k in range(20)])
    coarse = np.mean([edges(large_mask((64, 80), rng(k))) / large_mask((64, 80), rng(k)).sum() for k in range(20)])
    assert coarse < fine
    within = np.zeros((64, 80), bool)
    within[:, 40:] = True
    for k in range(10):
        m = large_mask((64, 80), rng(k), area=(0.2, 0.4), within=within)
        assert m.any() and not m[:, :40].any() and 0.18 <= m[:, 40:].mean() <= 0.42


def test_swap_anomaly_takes_a_region_of_the_other_image():
    r = rng(5)
    image = r.uniform(0.0, 0.4, (48, 48, 3)).astype(np.float32)
    other = r.uniform(0.6, 1.0, (48, 48, 3)).astype(np.float32)
    for k in range(10):
        full, mask = swap_anomaly(image, other, rng(k))  # the default: the region replaced, 5–30 % of the image
        m = mask > 0
        assert np.allclose(full[m], other[m], atol=1e-6) and np.array_equal(full[~m], image[~m])
        assert 0.04 <= m.mean() <= 0.32
        out, mask = swap_anomaly(image, other, rng(k), beta_max=0.8, area=(0.1, 0.5))
        m = mask > 0
        assert out.dtype == np.float32 and m.any() and 0.09 <= m.mean() <= 0.52
        assert np.array_equal(out[~m], image[~m])  # outside the mask: the image itself
        # inside: image + opacity · (other − image), one opacity per anomaly, in (0.2, 1] (DRAEM's 1 − β)
        opacity = (out[m] - image[m]) / (other[m] - image[m])
        assert np.allclose(opacity, opacity.mean(), atol=1e-4) and 0.2 < opacity.mean() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="shapes differ"):
        swap_anomaly(image, other[:40], rng(0))


def _block_image(g, size=64):
    """A size×size image whose g×g blocks each hold one colour and a diagonal ramp (so flips and turns show)."""
    b = size // g
    ramp = (np.add.outer(np.arange(b), 2 * np.arange(b)) / (3.0 * b)).astype(np.float32)
    image = np.zeros((size, size, 3), np.float32)
    for i in range(g):
        for j in range(g):
            colour = np.array([(i + 1) / (g + 1), (j + 1) / (g + 1), 0.5], np.float32)
            image[i * b:(i + 1) * b, j * b:(j + 1) * b] = 0.5 * colour + 0.5 * ramp[..., None] * colour
    return image


def test_shuffle_blocks_moves_every_block_once_flipped_or_turned():
    for g in (2, 4, 8):
        image = _block_image(g)
        b = 64 // g
        blocks = {(i, j): image[i * b:(i + 1) * b, j * b:(j + 1) * b] for i in range(g) for j in range(g)}
        for k in range(5):
            out = shuffle_blocks(image, rng(g, k), grids=(g,))
            assert out.shape == image.shape and out.dtype == np.float32
            assert np.array_equal(out, shuffle_blocks(image, rng(g, k), grids=(g,)))  # seeded
            used = []
            for (i, j) in blocks:
                target = out[i * b:(i + 1) * b, j * b:(j + 1) * b]
                found = [src for src, block in blocks.items()
                         if any(np.array_equal(target, np.rot90(v, t)) for t in range(4)
                                for v in (block, block[::-1], block[:, ::-1], block[::-1, ::-1]))]
                assert len(found) == 1 and found[0] != (i, j)  # another block, flipped or turned
                used.append(found[0])
            assert sorted(used) == sorted(blocks)  # each block used once
    odd = rng(1).uniform(0, 1, (50, 70, 3)).astype(np.float32)  # edges by rounding: blocks resized to fit
    out = shuffle_blocks(odd, rng(2))
    assert out.shape == odd.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert not np.array_equal(out, odd)


def test_structure_anomaly_fills_its_mask_with_the_image_rearranged():
    image = _block_image(4)
    inside_object = np.zeros((64, 64), bool)
    inside_object[8:56, 8:56] = True
    for k in range(10):
        out, mask = structure_anomaly(image, rng(k))
        m = mask > 0
        assert out.dtype == np.float32 and mask.dtype == np.float32 and m.any()
        assert np.array_equal(out[~m], image[~m])  # outside the mask: the image itself
        # inside: image + opacity · (its rearranged copy − image), one opacity in (0.2, 1] (DRAEM's 1 − β)
        r = rng(k)
        _ = synthesis.perlin_mask((64, 64), r)  # the same draws as structure_anomaly's mask
        fill = shuffle_blocks(image, r)
        opacity = 1.0 - float(r.uniform(0.0, 0.8))
        assert 0.2 < opacity <= 1.0 and np.allclose(out, blend(image, fill, mask, opacity), atol=1e-6)
        assert np.abs(out[m] - image[m]).max() > 0.02
        _, mask = structure_anomaly(image, rng(k), foreground=inside_object)
        assert (mask > 0).any() and not (mask[~inside_object] > 0).any()


def test_shade_anomaly_changes_the_level_or_the_texture_of_the_image_inside_its_mask_only():
    r0 = rng(0)
    grey = np.repeat((0.45 + 0.1 * r0.random((64, 64), dtype=np.float32))[..., None], 3, axis=2)  # a fine grain
    kernel = (0, 0)
    inside_object = np.zeros((64, 64), bool)
    inside_object[8:56, 8:56] = True
    modes = set()
    for k in range(20):
        out, mask = shade_anomaly(grey, rng(k))
        m = mask > 0
        assert out.dtype == np.float32 and mask.dtype == np.float32 and m.any()
        assert np.array_equal(out[~m], grey[~m])  # outside the mask: the image itself
        assert 0.0 <= out.min() and out.max() <= 1.0 and is_greyscale(out)  # no colour added
        assert np.abs(out[m] - grey[m]).max() > 0.03  # visible inside
        assert np.array_equal(out, shade_anomaly(grey, rng(k))[0])  # seeded
        # where the image changed: its local level (a blur) moved, or its fine texture (image minus blur) scaled
        full = m & (np.abs(out - grey).max(axis=2) > 0)
        level_in = cv2.GaussianBlur(grey, kernel, 2.0)[full].mean() - cv2.GaussianBlur(out, kernel, 2.0)[full].mean()
        grain_ratio = (out - cv2.GaussianBlur(out, kernel, 2.0))[full].std() / \
            (grey - cv2.GaussianBlur(grey, kernel, 2.0))[full].std()
        modes.add(("level" if abs(level_in) > 0.02 else "") + ("texture" if abs(np.log(grain_ratio)) > 0.2 else ""))
        _, mask = shade_anomaly(grey, rng(k), foreground=inside_object)
        assert (mask > 0).any() and not (mask[~inside_object] > 0).any()
    assert {"level", "texture"} <= modes  # both kinds of change occur
    flat = np.full((32, 32, 3), 0.5, np.float32)  # no texture to change: every draw changes the level instead
    for k in range(10):
        out, mask = shade_anomaly(flat, rng(k))
        assert np.allclose(out[mask == 0], 0.5) and np.abs(out[mask > 0] - 0.5).max() > 0.05


def test_warp_window_equals_the_full_warp_and_identity_keeps_the_image():
    img = rng(3).random((48, 40, 3), dtype=np.float32)
    ident = synthesis._Warp(np.array([[1.0, 0, 0], [0, 1.0, 0]]), None)
    full = (0, 48, 0, 40)
    assert np.array_equal(ident.sample(img, full, cv2.INTER_LINEAR), img)
    assert np.array_equal(ident.sample(img, full, cv2.INTER_LINEAR, step=4), img[::4, ::4])
    for k in range(5):
        warp = synthesis._random_warp((48, 40), rng(k))
        whole = warp.sample(img, full, cv2.INTER_LINEAR)
        box = (5, 31, 7, 29)
        np.testing.assert_allclose(warp.sample(img, box, cv2.INTER_LINEAR), whole[5:31, 7:29], atol=1e-6)
        np.testing.assert_allclose(warp.sample(img, full, cv2.INTER_LINEAR, step=4), whole[::4, ::4], atol=1e-6)
        inside = warp.sample(np.ones((48, 40), np.uint8), full, cv2.INTER_NEAREST)
        assert 0.2 < inside.mean() <= 1.0  # the warp moves the image, it does not lose it


def test_perlin_noise_equals_the_per_pixel_corner_formula():
    """The matrix-product form against the textbook one: each pixel mixes its 4 corner gradients' dot products."""
    h, w, ry, rx = 20, 28, 4, 7
    angles = rng(4).uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    ref = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            y, x = i * ry / h, j * rx / w
            y0, x0 = int(y), int(x)
            dots = [[np.sin(angles[y0 + a, x0 + b]) * (y - y0 - a) + np.cos(angles[y0 + a, x0 + b]) * (x - x0 - b)
                     for b in (0, 1)] for a in (0, 1)]
            sy, sx = fade(y - y0), fade(x - x0)
            top, bottom = dots[0][0] + sx * (dots[0][1] - dots[0][0]), dots[1][0] + sx * (dots[1][1] - dots[1][0])
            ref[i, j] = np.sqrt(2) * (top + sy * (bottom - top))
    np.testing.assert_allclose(perlin_noise((h, w), (ry, rx), rng(4)), ref, atol=1e-5)


def test_jitter_image_scales_brightness_and_contrast_within_the_strength_and_keeps_grey_grey():
    img = np.random.default_rng(0).uniform(0.3, 0.7, (24, 32, 3)).astype(np.float32)  # never clipped at 0.2
    grey = np.repeat(img[..., :1], 3, axis=2)
    lum = lambda x: x @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    for k in range(20):
        out = jitter_image(img, rng(k), 0.2)
        assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        b, c = rng(k).uniform(0.8, 1.2, size=2)  # the same draws: brightness, then contrast
        assert np.allclose(out, np.clip(lum(img * b).mean() + c * (img * b - lum(img * b).mean()), 0, 1), atol=1e-5)
        assert np.allclose(lum(out).mean(), lum(img).mean() * b, atol=1e-4)  # the mean level moves by b only
        assert abs(lum(out).std() / lum(img).std() - b * c) < 1e-3  # the contrast by b·c
        g = jitter_image(grey, rng(k), 0.2)
        assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    assert np.allclose(jitter_image(img, rng(3), 0.0), img, atol=1e-6)  # strength 0: unchanged
