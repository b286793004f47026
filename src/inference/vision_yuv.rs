//! Pure image preparation straight from a raw YUV camera buffer (YUYV, NV12,
//! YU12): resize, colour conversion and channel order in one pass over the
//! model input, with no full-size RGB image in between. No IO.
//!
//! Owns only the sampling of YUV planes. The geometry (fit, letterbox,
//! padding, channel order, normalisation) is `vision`'s, so a YUV frame and
//! the same frame converted to RGB land identically; the BT.601 arithmetic
//! and the buffer-layout checks are `convert`'s.
//!
//! Each output pixel takes the bilinear blend of Y at the same four source
//! pixels the RGB path blends, and of U and V at those pixels' chroma
//! samples (chroma replicated over its 2x1 or 2x2 block, as the RGB path's
//! conversion does), then is converted once. Colour conversion is affine,
//! so this is the two-pass result up to rounding, except where the RGB path
//! clamps an out-of-gamut source pixel before blending.

use crate::inference::model::InputSpec;
use crate::inference::vision::{Fit, Letterbox, Norm, Tensor, bilinear, pad_byte};
use crate::sources::camera::convert::{self, ConvertError, PixelFormat, RawYuv, YuvLayout, bt601_to_rgb};

/// Fractional bits the interpolated samples keep into the conversion, so the
/// only rounding is the conversion's own.
const FRAC: u32 = 6;

/// A borrowed raw camera buffer whose size was checked against its
/// geometry: sampling it cannot read out of bounds.
#[derive(Debug, Clone, Copy)]
pub struct YuvFrame<'a> {
    data: &'a [u8],
    layout: YuvLayout,
}

impl<'a> YuvFrame<'a> {
    /// `stride` is the byte length of one row of the first plane (V4L2
    /// `bytesperline`). MJPEG, odd sizes (as `convert` defines them), a
    /// stride under one row and a short buffer are errors.
    pub fn new(
        format: PixelFormat,
        data: &'a [u8],
        width: u32,
        height: u32,
        stride: usize,
    ) -> Result<Self, ConvertError> {
        let layout = convert::yuv_layout(format, data.len(), width, height, stride)?;
        Ok(Self { data, layout })
    }

    /// A view of a buffer the camera already checked: cannot fail. (The
    /// owned buffer, [`RawYuv`], is what frames carry and what converts to
    /// RGB; this view is only what the kernels sample.)
    pub fn of(raw: &'a RawYuv) -> Self {
        Self { data: raw.data(), layout: *raw.layout() }
    }

    pub fn dimensions(&self) -> (u32, u32) {
        (self.layout.width as u32, self.layout.height as u32)
    }
}

/// Byte offsets of one output column's taps: luma `ya`/`yb` within a luma
/// row, chroma `ca`/`cb` within a chroma row, and the weight of the second.
#[derive(Debug, Clone, Copy)]
struct Taps {
    ya: usize,
    yb: usize,
    ca: usize,
    cb: usize,
    wx: f32,
}

/// The output columns' taps, and whether every column's two taps share one
/// chroma column (a 2x horizontal downscale: luma pairs `2i, 2i + 1`).
struct Columns {
    taps: Vec<Taps>,
    one_chroma: bool,
}

impl Columns {
    fn new(frame: &YuvFrame, fit: &Fit) -> Self {
        let l = &frame.layout;
        let taps: Vec<Taps> = fit
            .xs
            .iter()
            .map(|&(x0, x1, wx)| Taps {
                ya: x0 * l.y_step,
                yb: x1 * l.y_step,
                ca: (x0 / 2) * l.c_step,
                cb: (x1 / 2) * l.c_step,
                wx,
            })
            .collect();
        let one_chroma = taps.iter().all(|t| t.ca == t.cb);
        Self { taps, one_chroma }
    }
}

/// Writes row `y` of the fitted picture (`fit.nw` pixels, RGB in source
/// order) into `out`.
fn sample_row(frame: &YuvFrame, fit: &Fit, cols: &Columns, y: usize, out: &mut [u8]) {
    let (src, l) = (frame.data, &frame.layout);
    let (y0, y1, wy) = fit.ys[y];
    let (l0, l1) = (l.luma(src, y0), l.luma(src, y1));
    let (u0, v0) = l.chroma(src, l.chroma_row(y0));
    let pixels = out.chunks_exact_mut(3).zip(&cols.taps);
    if fit.identity {
        // Frame at the fitted size: one conversion per source pixel.
        for (d, t) in pixels {
            d.copy_from_slice(&bt601_to_rgb(l0[t.ya] as i32, u0[t.ca] as i32, v0[t.ca] as i32, 0));
        }
        return;
    }
    let (u1, v1) = l.chroma(src, l.chroma_row(y1));
    let q = |f: f32| (f * (1 << FRAC) as f32 + 0.5) as i32;
    if cols.one_chroma {
        // The horizontal chroma blend is of one sample with itself: only the
        // vertical one is left (the same value `bilinear` gives, cheaper).
        let lerp = |a: u8, b: u8| a as f32 + (b as f32 - a as f32) * wy;
        for (d, t) in pixels {
            let luma = bilinear(l0, l1, t.ya, t.yb, 0, t.wx, wy);
            let (u, v) = (lerp(u0[t.ca], u1[t.ca]), lerp(v0[t.ca], v1[t.ca]));
            d.copy_from_slice(&bt601_to_rgb(q(luma), q(u), q(v), FRAC));
        }
        return;
    }
    for (d, t) in pixels {
        let luma = bilinear(l0, l1, t.ya, t.yb, 0, t.wx, wy);
        let u = bilinear(u0, u1, t.ca, t.cb, 0, t.wx, wy);
        let v = bilinear(v0, v1, t.ca, t.cb, 0, t.wx, wy);
        d.copy_from_slice(&bt601_to_rgb(q(luma), q(u), q(v), FRAC));
    }
}

/// [`vision::prepare_u8_nhwc`](crate::inference::vision::prepare_u8_nhwc)
/// straight from a YUV buffer: `out` becomes the uint8 NHWC `[H, W, 3]`
/// model input (reused across frames), same fit, padding and channel order.
pub fn prepare_yuv_u8_nhwc(frame: &YuvFrame, spec: &InputSpec, out: &mut Vec<u8>) -> Letterbox {
    let fit = Fit::new(frame.dimensions(), spec);
    let (w, h, nw, nh, order) = (fit.w, fit.h, fit.nw, fit.nh, fit.order);
    out.clear();
    out.resize(w * h * 3, pad_byte(spec));
    let cols = Columns::new(frame, &fit);
    for (y, o) in out.chunks_exact_mut(w * 3).enumerate().take(nh) {
        let o = &mut o[..nw * 3];
        sample_row(frame, &fit, &cols, y, o);
        if order != [0, 1, 2] {
            for d in o.chunks_exact_mut(3) {
                let s = [d[0], d[1], d[2]];
                d.copy_from_slice(&[s[order[0]], s[order[1]], s[order[2]]]);
            }
        }
    }
    fit.letterbox
}

/// [`vision::prepare`](crate::inference::vision::prepare) straight from a
/// YUV buffer: the normalised float NCHW tensor, same fit and channel order.
/// Pixels are rounded to bytes before normalising (as the RGB path's
/// converted frame is).
pub fn prepare_yuv(frame: &YuvFrame, spec: &InputSpec, out: &mut Tensor) -> Letterbox {
    let fit = Fit::new(frame.dimensions(), spec);
    let (w, h, nw, nh, order) = (fit.w, fit.h, fit.nw, fit.nh, fit.order);
    let Norm { mean, inv_std, pad } = Norm::new(spec, order);
    let plane = w * h;
    out.shape.clear();
    out.shape.extend_from_slice(&[1, 3, h, w]);
    out.data.resize(3 * plane, 0.0);
    let cols = Columns::new(frame, &fit);
    let mut rgb = vec![0u8; nw * 3];
    let (p0, rest) = out.data.split_at_mut(plane);
    let (p1, p2) = rest.split_at_mut(plane);
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        let (o0, o1, o2) = (&mut p0[row.clone()], &mut p1[row.clone()], &mut p2[row]);
        if y < nh {
            sample_row(frame, &fit, &cols, y, &mut rgb);
            for (x, p) in rgb.chunks_exact(3).enumerate() {
                o0[x] = (p[order[0]] as f32 - mean[0]) * inv_std[0];
                o1[x] = (p[order[1]] as f32 - mean[1]) * inv_std[1];
                o2[x] = (p[order[2]] as f32 - mean[2]) * inv_std[2];
            }
        }
        let from = if y < nh { nw } else { 0 };
        o0[from..].fill(pad[0]);
        o1[from..].fill(pad[1]);
        o2[from..].fill(pad[2]);
    }
    fit.letterbox
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;
    use crate::inference::model::{ColorOrder, Layout, Resize};
    use crate::inference::vision::{prepare, prepare_u8_nhwc};

    const FORMATS: [PixelFormat; 3] = [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Yu12];

    fn spec(w: u32, h: u32, color: ColorOrder, resize: Resize) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: w,
            height: h,
            color,
            layout: Layout::Nchw,
            resize,
            pad_value: 114.0,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        }
    }

    /// A photo-like frame: smooth shading with texture at a few scales and
    /// saturated-ish colour patches, all in gamut.
    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32, y as f32);
            let t = (fx / 9.0).sin() * (fy / 13.0).cos();
            let r = 120.0 + 90.0 * t + 20.0 * (fx / 3.1).sin();
            let g = 60.0 + 150.0 * fy / h as f32 + 25.0 * (fy / 5.3).cos();
            let b = 200.0 - 160.0 * fx / w as f32 + 30.0 * t;
            image::Rgb([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8])
        })
    }

    /// RGB8 → `format` with BT.601 limited-range coefficients (chroma
    /// averaged over its block), rows padded to `stride`.
    fn to_yuv(img: &RgbImage, format: PixelFormat, stride: usize) -> Vec<u8> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let px = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0.map(f32::from);
        let q = |f: f32| f.round().clamp(0.0, 255.0) as u8;
        let luma = |p: [f32; 3]| q(16.0 + 0.257 * p[0] + 0.504 * p[1] + 0.098 * p[2]);
        // Mean chroma over the pixels of a block.
        let chroma = |pts: &[(usize, usize)]| {
            let n = pts.len() as f32;
            let m = pts.iter().fold([0.0f32; 3], |a, &(x, y)| {
                let p = px(x, y);
                [a[0] + p[0] / n, a[1] + p[1] / n, a[2] + p[2] / n]
            });
            (
                q(128.0 - 0.148 * m[0] - 0.291 * m[1] + 0.439 * m[2]),
                q(128.0 + 0.439 * m[0] - 0.368 * m[1] - 0.071 * m[2]),
            )
        };
        if format == PixelFormat::Yuyv {
            let mut out = vec![0u8; stride * h];
            for y in 0..h {
                for x in (0..w).step_by(2) {
                    let (u, v) = chroma(&[(x, y), (x + 1, y)]);
                    let o = y * stride + 2 * x;
                    out[o..o + 4].copy_from_slice(&[luma(px(x, y)), u, luma(px(x + 1, y)), v]);
                }
            }
            return out;
        }
        let c_stride = if format == PixelFormat::Yu12 { stride / 2 } else { stride };
        // Y, then h/2 chroma rows (YU12: two planes of half-length rows).
        let mut out = vec![0u8; stride * h + stride * (h / 2)];
        for y in 0..h {
            for x in 0..w {
                out[y * stride + x] = luma(px(x, y));
            }
        }
        let y_size = stride * h;
        for cy in 0..h / 2 {
            for cx in 0..w / 2 {
                let (x, y) = (2 * cx, 2 * cy);
                let (u, v) = chroma(&[(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)]);
                if format == PixelFormat::Nv12 {
                    let o = y_size + cy * stride + 2 * cx;
                    out[o..o + 2].copy_from_slice(&[u, v]);
                } else {
                    out[y_size + cy * c_stride + cx] = u;
                    out[y_size + c_stride * (h / 2) + cy * c_stride + cx] = v;
                }
            }
        }
        out
    }

    /// (max, mean) absolute difference of two byte buffers of one length.
    fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
        assert_eq!(a.len(), b.len());
        let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
        let sum: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
        (max, sum as f64 / a.len().max(1) as f64)
    }

    /// Each format of a `frame`-sized photo into `s`: the fused bytes against
    /// `convert::to_rgb` + `prepare_u8_nhwc`; returns the worst (max, mean).
    fn against_two_pass(frame: (u32, u32), extra_stride: usize, s: &InputSpec) -> (u8, f64) {
        let img = photo(frame.0, frame.1);
        let mut worst = (0u8, 0.0f64);
        for format in FORMATS {
            let stride = format.min_stride(frame.0) + extra_stride;
            let data = to_yuv(&img, format, stride);
            let rgb = convert::to_rgb(format, &data, frame.0, frame.1, stride).unwrap();
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let lb_want = prepare_u8_nhwc(&rgb, s, &mut want);
            let yuv = YuvFrame::new(format, &data, frame.0, frame.1, stride).unwrap();
            let lb_got = prepare_yuv_u8_nhwc(&yuv, s, &mut got);
            assert_eq!(lb_got, lb_want, "{format} {frame:?}");
            let raw = RawYuv::new(format, data.clone(), frame.0, frame.1, stride).unwrap();
            assert_eq!(raw.to_rgb(), rgb, "{format} {frame:?}: RawYuv::to_rgb is convert's");
            let (max, mean) = diff(&got, &want);
            assert!(
                max <= 3 && mean <= 1.0,
                "{format} {frame:?} into {}x{}: max {max}, mean {mean}",
                s.width,
                s.height
            );
            worst = (worst.0.max(max), worst.1.max(mean));
        }
        worst
    }

    #[test]
    fn frame_at_the_model_size_converts_exactly_as_the_two_pass_path() {
        let s = spec(64, 48, ColorOrder::Bgr, Resize::Letterbox);
        assert_eq!(against_two_pass((64, 48), 0, &s), (0, 0.0));
        assert_eq!(against_two_pass((64, 48), 8, &spec(64, 48, ColorOrder::Rgb, Resize::Stretch)), (0, 0.0));
    }

    #[test]
    fn camera_720p_into_640_square_letterbox_matches_the_two_pass_path() {
        let s = spec(640, 640, ColorOrder::Rgb, Resize::Letterbox);
        let (max, mean) = against_two_pass((1280, 720), 0, &s);
        assert!(max <= 3 && mean <= 1.0, "max {max}, mean {mean}");
    }

    #[test]
    fn odd_model_sizes_padded_strides_and_upscales_match_the_two_pass_path() {
        against_two_pass((38, 22), 6, &spec(17, 13, ColorOrder::Bgr, Resize::Letterbox));
        against_two_pass((38, 22), 2, &spec(13, 17, ColorOrder::Rgb, Resize::Letterbox));
        against_two_pass((10, 6), 0, &spec(33, 21, ColorOrder::Rgb, Resize::Stretch));
        against_two_pass((2, 2), 4, &spec(5, 3, ColorOrder::Bgr, Resize::Letterbox));
    }

    #[test]
    fn float_nchw_matches_the_two_pass_path() {
        let img = photo(96, 54);
        let s = spec(40, 40, ColorOrder::Bgr, Resize::Letterbox);
        for format in FORMATS {
            let stride = format.min_stride(96);
            let data = to_yuv(&img, format, stride);
            let rgb = convert::to_rgb(format, &data, 96, 54, stride).unwrap();
            let (mut want, mut got) = (Tensor::zeros(&[1]), Tensor::zeros(&[1]));
            let lb_want = prepare(&rgb, &s, &mut want);
            let lb_got = prepare_yuv(&YuvFrame::new(format, &data, 96, 54, stride).unwrap(), &s, &mut got);
            assert_eq!(lb_got, lb_want);
            assert_eq!(got.shape, want.shape);
            let plane = 40 * 40;
            for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
                // Back in pixel units (channel i / plane in BGR order).
                let std = s.std[2 - i / plane];
                assert!(((g - w) * std).abs() <= 3.5, "{format} element {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn short_buffers_bad_strides_and_mjpeg_are_errors_not_panics() {
        for format in FORMATS {
            let stride = format.min_stride(16);
            let data = to_yuv(&photo(16, 8), format, stride);
            let needed = data.len();
            assert!(YuvFrame::new(format, &data[..needed], 16, 8, stride).is_ok(), "{format}");
            assert!(
                matches!(
                    YuvFrame::new(format, &data[..needed - 1], 16, 8, stride),
                    Err(ConvertError::ShortBuffer { .. })
                ),
                "{format}"
            );
            for (w, h, st) in
                [(0, 8, stride), (16, 0, stride), (15, 8, stride), (16, 8, stride - 1), (16, 8, usize::MAX)]
            {
                assert!(YuvFrame::new(format, &data, w, h, st).is_err(), "{format} {w}x{h} stride {st}");
            }
        }
        assert!(matches!(
            YuvFrame::new(PixelFormat::Yu12, &[0; 4096], 16, 8, 17),
            Err(ConvertError::BadGeometry { .. })
        ));
        assert!(matches!(
            YuvFrame::new(PixelFormat::Nv12, &[0; 4096], 16, 7, 16),
            Err(ConvertError::BadGeometry { .. })
        ));
        assert!(matches!(
            YuvFrame::new(PixelFormat::Mjpeg, &[0; 4096], 16, 8, 32),
            Err(ConvertError::NotRawYuv { .. })
        ));
        // An odd stride is fine where the format allows it.
        let data = to_yuv(&photo(16, 8), PixelFormat::Yuyv, 33);
        let frame = YuvFrame::new(PixelFormat::Yuyv, &data, 16, 8, 33).unwrap();
        let mut out = Vec::new();
        prepare_yuv_u8_nhwc(&frame, &spec(8, 8, ColorOrder::Rgb, Resize::Letterbox), &mut out);
        assert_eq!(out.len(), 8 * 8 * 3);
    }
}
