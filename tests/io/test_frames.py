"""Frames are found in natural order, decoded the same way everywhere, and bad files named."""

import os
import tempfile
import unittest
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import InputError
from pipeline.io.frames import (
    list_image_files,
    load_image,
    natural_key,
    prepare_frames,
)


def _rgb(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class FrameTestCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()


class OrderingTest(FrameTestCase):
    def test_natural_sort(self):
        for name in ("frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.jpg"):
            Image.fromarray(_rgb()).save(self.dir / name)
        (self.dir / "notes.txt").write_text("not a frame")
        names = [p.name for p in list_image_files(self.dir)]
        self.assertEqual(names, ["frame_1.png", "frame_2.png", "Frame_3.jpg", "frame_10.png"])
        self.assertLess(natural_key("img2"), natural_key("img10"))

    def test_names_equal_but_for_case_or_zeros_have_one_order(self):
        """Sorted by value alone they tied, and kept the order the folder listed them in."""
        names = ["frame_1.png", "frame_01.png", "frame_001.png", "IMG_2.PNG", "img_2.png"]
        orders = []
        for k, listed in enumerate((names, names[::-1])):
            folder = self.dir / str(k)
            folder.mkdir()
            for name in listed:  # created in another order: tmpfs lists newest first
                Image.fromarray(_rgb()).save(folder / name)
            orders.append([p.name for p in list_image_files(folder)])
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], ["frame_001.png", "frame_01.png", "frame_1.png", "IMG_2.PNG",
                                     "img_2.png"])

    def test_hidden_files_are_no_frames(self):
        Image.fromarray(_rgb()).save(self.dir / "frame_000.png")
        (self.dir / "._frame_000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble
        (self.dir / ".DS_Store").write_bytes(bytes(16))
        self.assertEqual([p.name for p in list_image_files(self.dir)], ["frame_000.png"])

    def test_all_extensions_are_found(self):
        for i, ext in enumerate(("jpg", "jpeg", "png", "webp", "bmp", "tif", "TIFF")):
            Image.fromarray(_rgb()).save(self.dir / f"f{i}.{ext}")
        self.assertEqual(len(list_image_files(self.dir)), 7)

    def test_pattern_selects_frames(self):
        for name in ("frame-000001.color.jpg", "frame-000001.depth.png", "frame-000000.color.jpg"):
            Image.fromarray(_rgb()).save(self.dir / name)
        names = [p.name for p in list_image_files(self.dir, "*.color.jpg")]
        self.assertEqual(names, ["frame-000000.color.jpg", "frame-000001.color.jpg"])
        with self.assertRaisesRegex(InputError, r"looked for \*\.tif"):
            list_image_files(self.dir, "*.tif")

    def test_missing_and_empty_folders(self):
        with self.assertRaisesRegex(InputError, "does not exist"):
            list_image_files(self.dir / "nope")
        with self.assertRaisesRegex(InputError, "no images"):
            list_image_files(self.dir)
        (self.dir / "file.png").write_bytes(b"")
        with self.assertRaisesRegex(InputError, "not a folder"):
            list_image_files(self.dir / "file.png")


class DecodingTest(FrameTestCase):
    def test_exif_orientation_applied(self):
        arr = _rgb(20, 30)
        img = Image.fromarray(arr)
        exif = img.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        img.save(self.dir / "rot.jpg", exif=exif, quality=100)
        out = load_image(self.dir / "rot.jpg")
        self.assertEqual(out.shape, (30, 20, 3))

    def test_grayscale_rgba_and_16bit(self):
        gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
        Image.fromarray(gray, mode="L").save(self.dir / "g.png")
        np.testing.assert_array_equal(load_image(self.dir / "g.png")[..., 1], gray)
        rgba = np.dstack([_rgb(20, 30), np.full((20, 30), 7, np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(self.dir / "a.png")
        np.testing.assert_array_equal(load_image(self.dir / "a.png"), rgba[..., :3])
        deep = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
        Image.fromarray(deep).save(self.dir / "d.png")
        out = load_image(self.dir / "d.png")
        self.assertEqual(out.dtype, np.uint8)
        np.testing.assert_allclose(out[..., 0], np.round(deep / 257.0), atol=1)

    def test_conversion_writes_plain_png_copies(self):
        Image.fromarray(_rgb(), mode="RGB").save(self.dir / "a.png")
        Image.fromarray(_rgb(seed=1)).save(self.dir / "b.webp", lossless=True)
        Image.fromarray(np.zeros((24, 32), np.uint8), mode="L").save(self.dir / "c.png")
        cache = self.dir / "cache"
        frames = prepare_frames(list_image_files(self.dir), cache, show_progress=False)
        self.assertEqual([f.name for f in frames], ["a.png", "b.png", "c.png"])
        self.assertEqual(frames[0].path, self.dir / "a.png")  # plain frames are used in place
        for frame in frames[1:]:
            self.assertEqual(frame.path.parent, cache)
            with Image.open(frame.path) as img:
                self.assertEqual((img.format, img.mode), ("PNG", "RGB"))
        np.testing.assert_array_equal(load_image(frames[1].path), load_image(self.dir / "b.webp"))
        self.assertEqual([f.index for f in frames], [0, 1, 2])
        self.assertEqual(frames[0].size, (32, 24))

    def test_a_converted_copy_never_takes_another_frames_name(self):
        """``f.webp`` becomes ``f.png``, ``f.webp.png`` when that is taken, and so on."""
        Image.fromarray(_rgb(seed=1)).save(self.dir / "f.webp", lossless=True)
        for k, name in enumerate(("f.png", "f.webp.png", "f.webp-2.png"), start=2):
            Image.fromarray(_rgb(seed=k)).save(self.dir / name)
        frames = prepare_frames(list_image_files(self.dir), self.dir / "cache",
                                show_progress=False)
        self.assertEqual(len({f.name for f in frames}), 4)
        [converted] = [f for f in frames if f.source.name == "f.webp"]
        self.assertEqual(converted.name, "f.webp-3.png")
        np.testing.assert_array_equal(load_image(converted.path), _rgb(seed=1))

    def test_16_bit_rgb_png_is_converted(self):
        import cv2

        rgb16 = (_rgb().astype(np.uint16) * 257)[..., ::-1]  # OpenCV writes BGR
        cv2.imwrite(str(self.dir / "deep.png"), rgb16)
        with Image.open(self.dir / "deep.png") as img:
            self.assertEqual(img.mode, "RGB")  # Pillow hides the 16 bits
        [frame, _] = prepare_frames([self.dir / "deep.png", self._plain("b.png")],
                                    self.dir / "cache", show_progress=False)
        self.assertEqual((frame.name, frame.path), ("deep.png", self.dir / "cache" / "deep.png"))
        with open(frame.path, "rb") as f:
            self.assertEqual(f.read()[24], 8)  # an 8-bit PNG
        np.testing.assert_array_equal(load_image(frame.path), _rgb())

    def test_content_hash_and_a_stale_conversion_is_redone(self):
        source = self.dir / "a.webp"
        Image.fromarray(_rgb(seed=1)).save(source, lossless=True)
        cache = self.dir / "cache"
        [first, _] = prepare_frames([source, self._plain("b.png")], cache, show_progress=False)
        stamp = os.stat(source)
        Image.fromarray(_rgb(seed=2)).save(source, lossless=True)  # other pixels,
        os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns - 10**9))  # an older mtime
        [second, _] = prepare_frames([source, self.dir / "b.png"], cache, show_progress=False)
        self.assertNotEqual(first.digest, second.digest)
        np.testing.assert_array_equal(load_image(second.path), _rgb(seed=2))
        [third, _] = prepare_frames([source, self.dir / "b.png"], cache, show_progress=False)
        self.assertEqual(third.digest, second.digest)
        self.assertEqual(os.stat(third.path).st_mtime_ns, os.stat(second.path).st_mtime_ns)

    def test_an_animation_is_its_first_picture_and_is_named(self):
        pictures = [Image.fromarray(_rgb(seed=s)) for s in (4, 5, 6)]
        animated = self.dir / "anim.webp"
        pictures[0].save(animated, save_all=True, append_images=pictures[1:], lossless=True)
        with self.assertLogs("pipeline.io.frames", "WARNING") as logs:
            [frame, _] = prepare_frames([animated, self._plain("b.png")], self.dir / "cache",
                                        show_progress=False)
        self.assertEqual(len(logs.output), 1)
        self.assertIn("frame anim.webp holds 3 pictures", logs.output[0])
        np.testing.assert_array_equal(load_image(frame.path), _rgb(seed=4))

    def _plain(self, name):
        Image.fromarray(_rgb(seed=3)).save(self.dir / name)
        return self.dir / name


class BadFramesTest(FrameTestCase):
    def _make(self):
        for i in range(4):
            Image.fromarray(_rgb(seed=i)).save(self.dir / f"f{i}.jpg")
        good = (self.dir / "f2.jpg").read_bytes()
        (self.dir / "f2.jpg").write_bytes(good[: len(good) // 3])  # truncated
        (self.dir / "f3.jpg").write_bytes(b"definitely not a jpeg")
        return list_image_files(self.dir)

    def test_bad_frame_stops_with_its_name(self):
        with self.assertRaisesRegex(InputError, r"f2\.jpg.*and 1 more.*--skip-bad-frames"):
            prepare_frames(self._make(), self.dir / "cache", show_progress=False)

    def test_skip_bad_frames(self):
        with self.assertLogs("pipeline.io.frames", "WARNING") as logs:
            frames = prepare_frames(self._make(), self.dir / "cache", skip_bad_frames=True,
                                    show_progress=False)
        self.assertEqual([f.name for f in frames], ["f0.jpg", "f1.jpg"])
        self.assertEqual(len(logs.records), 2)
        # the same words every run: the file named, not the address of a buffer
        text = "\n".join(logs.output)
        self.assertNotIn("0x", text)
        self.assertIn("cannot identify image file f3.jpg", text)

    def test_control_character_in_a_name_is_a_bad_frame(self):
        for name in ("a.png", "b.png", "c\nd.png"):
            Image.fromarray(_rgb()).save(self.dir / name)
        with self.assertRaisesRegex(InputError, "control character"):
            prepare_frames(list_image_files(self.dir), self.dir / "cache", show_progress=False)
        frames = prepare_frames(list_image_files(self.dir), self.dir / "cache",
                                skip_bad_frames=True, show_progress=False)
        self.assertEqual([f.name for f in frames], ["a.png", "b.png"])

    def test_too_few_good_frames(self):
        paths = self._make()[2:]
        with self.assertRaisesRegex(InputError, "at least 2"):
            prepare_frames(paths, self.dir / "cache", skip_bad_frames=True, show_progress=False)


if __name__ == "__main__":
    unittest.main()
