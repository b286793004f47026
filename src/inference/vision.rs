//! Pure image preparation: an RGB frame becomes the model's input tensor.
//!
//! Owns resizing (letterbox or stretch), channel order and normalisation, and
//! the inverse mapping of boxes back to frame pixels. No IO.

use image::RgbImage;

use crate::inference::model::{ColorOrder, InputSpec, Resize};

/// A dense `f32` tensor, NCHW, batch 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        Self { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }
}

/// Maps model-input coordinates back to frame coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale_x: f32,
    pub scale_y: f32,
    pub frame_width: u32,
    pub frame_height: u32,
    /// The model input's size, for decoders whose boxes are normalised to it.
    pub input_width: u32,
    pub input_height: u32,
}

impl Letterbox {
    /// Box in model-input pixels to box in frame pixels, clamped to the frame.
    pub fn to_frame(&self, b: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.frame_width as f32, self.frame_height as f32);
        [
            (b[0] / self.scale_x).clamp(0.0, w),
            (b[1] / self.scale_y).clamp(0.0, h),
            (b[2] / self.scale_x).clamp(0.0, w),
            (b[3] / self.scale_y).clamp(0.0, h),
        ]
    }
}

/// One axis of a bilinear resize: for each output index, the two source
/// indices and the weight of the second (half-pixel centres, as OpenCV's
/// `INTER_LINEAR`, which the reference pre-processing of these models uses).
fn axis_map(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let s = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s as usize).min(src - 1);
            let i1 = (i0 + 1).min(src - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// The size a `frame`-sized image takes inside the model input: the whole
/// input when stretched, the aspect-preserving fit (top-left, padded
/// right/bottom) when letterboxed.
pub fn fitted_size(frame: (u32, u32), spec: &InputSpec) -> (u32, u32) {
    let (tw, th) = (spec.width, spec.height);
    let (fw, fh) = frame;
    match spec.resize {
        Resize::Stretch => (tw, th),
        Resize::Letterbox => {
            let s = (tw as f32 / fw as f32).min(th as f32 / fh as f32);
            (((fw as f32 * s).round() as u32).clamp(1, tw), ((fh as f32 * s).round() as u32).clamp(1, th))
        }
    }
}

/// The inverse of [`prepare`]'s normalisation: the tensor back as the RGB
/// picture the model was given (padding included), rounded to 8 bits.
/// `None` when the tensor is not the NCHW batch-1 shape `spec` describes.
pub fn tensor_to_rgb(t: &Tensor, spec: &InputSpec) -> Option<RgbImage> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    if t.shape != [1, 3, h, w] || t.data.len() != 3 * w * h {
        return None;
    }
    let order = match spec.color {
        ColorOrder::Rgb => [0usize, 1, 2],
        ColorOrder::Bgr => [2usize, 1, 0],
    };
    let plane = w * h;
    let mut img = RgbImage::new(spec.width, spec.height);
    for (i, px) in img.as_mut().chunks_exact_mut(3).enumerate() {
        for (c, &src) in order.iter().enumerate() {
            let v = t.data[c * plane + i] * spec.std[src] + spec.mean[src];
            px[src] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Some(img)
}

/// Where the resized frame lands in the model input, shared by [`prepare`],
/// [`prepare_u8_nhwc`] and the YUV kernels (`vision_yuv`) so all paths
/// resize identically.
pub(super) struct Fit {
    /// Model input size.
    pub(super) w: usize,
    pub(super) h: usize,
    /// Size of the resized frame inside it (the rest is padding).
    pub(super) nw: usize,
    pub(super) nh: usize,
    /// Frame already at the fitted size: rows are copied, not interpolated.
    pub(super) identity: bool,
    pub(super) xs: Vec<(usize, usize, f32)>,
    pub(super) ys: Vec<(usize, usize, f32)>,
    /// Output channel c takes source channel `order[c]`.
    pub(super) order: [usize; 3],
    pub(super) letterbox: Letterbox,
}

impl Fit {
    /// The fit of a `frame`-sized (width, height) image into `spec`'s input.
    pub(super) fn new(frame: (u32, u32), spec: &InputSpec) -> Self {
        let (tw, th) = (spec.width, spec.height);
        let (fw, fh) = frame;
        let (nw, nh) = fitted_size((fw, fh), spec);
        let (sx, sy) = (nw as f32 / fw as f32, nh as f32 / fh as f32);
        Self {
            w: tw as usize,
            h: th as usize,
            nw: nw as usize,
            nh: nh as usize,
            identity: (nw, nh) == (fw, fh),
            xs: axis_map(fw as usize, nw as usize),
            ys: axis_map(fh as usize, nh as usize),
            order: match spec.color {
                ColorOrder::Rgb => [0, 1, 2],
                ColorOrder::Bgr => [2, 1, 0],
            },
            letterbox: Letterbox {
                scale_x: sx,
                scale_y: sy,
                frame_width: fw,
                frame_height: fh,
                input_width: tw,
                input_height: th,
            },
        }
    }
}

/// The float paths' normalisation per output channel (already in `order`):
/// `(v - mean) * inv_std`, and the pad value normalised the same way.
pub(super) struct Norm {
    pub(super) mean: [f32; 3],
    pub(super) inv_std: [f32; 3],
    pub(super) pad: [f32; 3],
}

impl Norm {
    pub(super) fn new(spec: &InputSpec, order: [usize; 3]) -> Self {
        let inv_std: [f32; 3] = std::array::from_fn(|c| 1.0 / spec.std[order[c]]);
        let mean: [f32; 3] = std::array::from_fn(|c| spec.mean[order[c]]);
        let pad = std::array::from_fn(|c| (spec.pad_value - mean[c]) * inv_std[c]);
        Self { mean, inv_std, pad }
    }
}

/// The uint8 paths' padding: the spec's pad value rounded to a byte.
pub(super) fn pad_byte(spec: &InputSpec) -> u8 {
    spec.pad_value.round().clamp(0.0, 255.0) as u8
}

/// Bilinear sample of channel `c` between source pixels at byte offsets `a`
/// and `b` of rows `r0` (weight `1 - wy`) and `r1` (weight `wy`).
#[inline(always)]
pub(super) fn bilinear(r0: &[u8], r1: &[u8], a: usize, b: usize, c: usize, wx: f32, wy: f32) -> f32 {
    let top = r0[a + c] as f32 + (r0[b + c] as f32 - r0[a + c] as f32) * wx;
    let bot = r1[a + c] as f32 + (r1[b + c] as f32 - r1[a + c] as f32) * wx;
    top + (bot - top) * wy
}

/// Resizes `frame` as `spec` says and writes the normalised NCHW tensor into
/// `out` (reused across frames to avoid an allocation per frame).
///
/// Resize, channel order, normalisation and the HWC→CHW transpose happen in
/// one pass over the output: no intermediate image.
pub fn prepare(frame: &RgbImage, spec: &InputSpec, out: &mut Tensor) -> Letterbox {
    let fit = Fit::new(frame.dimensions(), spec);
    let (w, h, nw, nh, order) = (fit.w, fit.h, fit.nw, fit.nh, fit.order);
    let plane = w * h;
    out.shape.clear();
    out.shape.extend_from_slice(&[1, 3, h, w]);
    out.data.resize(3 * plane, 0.0);
    let Norm { mean, inv_std, pad } = Norm::new(spec, order);
    let raw = frame.as_raw();
    let stride = frame.width() as usize * 3;
    let (p0, rest) = out.data.split_at_mut(plane);
    let (p1, p2) = rest.split_at_mut(plane);
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        let (o0, o1, o2) = (&mut p0[row.clone()], &mut p1[row.clone()], &mut p2[row]);
        if y >= nh {
            o0.fill(pad[0]);
            o1.fill(pad[1]);
            o2.fill(pad[2]);
            continue;
        }
        let (y0, y1, wy) = fit.ys[y];
        if fit.identity {
            // Frame already at the model's size: no interpolation.
            let r = &raw[y0 * stride..(y0 + 1) * stride];
            for x in 0..nw {
                let p = &r[x * 3..x * 3 + 3];
                o0[x] = (p[order[0]] as f32 - mean[0]) * inv_std[0];
                o1[x] = (p[order[1]] as f32 - mean[1]) * inv_std[1];
                o2[x] = (p[order[2]] as f32 - mean[2]) * inv_std[2];
            }
        } else {
            let (r0, r1) = (&raw[y0 * stride..(y0 + 1) * stride], &raw[y1 * stride..(y1 + 1) * stride]);
            for (x, &(x0, x1, wx)) in fit.xs.iter().enumerate() {
                let (a, b) = (x0 * 3, x1 * 3);
                o0[x] = (bilinear(r0, r1, a, b, order[0], wx, wy) - mean[0]) * inv_std[0];
                o1[x] = (bilinear(r0, r1, a, b, order[1], wx, wy) - mean[1]) * inv_std[1];
                o2[x] = (bilinear(r0, r1, a, b, order[2], wx, wy) - mean[2]) * inv_std[2];
            }
        }
        o0[nw..].fill(pad[0]);
        o1[nw..].fill(pad[1]);
        o2[nw..].fill(pad[2]);
    }
    fit.letterbox
}

/// Resizes `frame` as `spec` says into `out` as uint8 NHWC `[H, W, 3]` pixels
/// (reused across frames): for accelerators whose quantised input takes raw
/// pixels and normalises on the chip (Hailo Model Zoo HEFs). Channel order
/// and padding follow `spec` (the pad value rounded to a byte); mean and std
/// are not applied. No float tensor and no transpose: a frame already at the
/// model's size is copied row by row.
pub fn prepare_u8_nhwc(frame: &RgbImage, spec: &InputSpec, out: &mut Vec<u8>) -> Letterbox {
    let fit = Fit::new(frame.dimensions(), spec);
    let (w, h, nw, nh, order) = (fit.w, fit.h, fit.nw, fit.nh, fit.order);
    let pad = pad_byte(spec);
    out.clear();
    out.resize(w * h * 3, pad);
    let raw = frame.as_raw();
    let stride = frame.width() as usize * 3;
    for (y, o) in out.chunks_exact_mut(w * 3).enumerate().take(nh) {
        let (y0, y1, wy) = fit.ys[y];
        let o = &mut o[..nw * 3];
        if fit.identity {
            let r = &raw[y0 * stride..(y0 + 1) * stride];
            if order == [0, 1, 2] {
                o.copy_from_slice(&r[..nw * 3]);
            } else {
                for (d, s) in o.chunks_exact_mut(3).zip(r.chunks_exact(3)) {
                    d.copy_from_slice(&[s[order[0]], s[order[1]], s[order[2]]]);
                }
            }
            continue;
        }
        let (r0, r1) = (&raw[y0 * stride..(y0 + 1) * stride], &raw[y1 * stride..(y1 + 1) * stride]);
        for (d, &(x0, x1, wx)) in o.chunks_exact_mut(3).zip(&fit.xs) {
            let (a, b) = (x0 * 3, x1 * 3);
            // A convex blend of bytes stays in 0..=255: rounding is the only conversion.
            d[0] = (bilinear(r0, r1, a, b, order[0], wx, wy) + 0.5) as u8;
            d[1] = (bilinear(r0, r1, a, b, order[1], wx, wy) + 0.5) as u8;
            d[2] = (bilinear(r0, r1, a, b, order[2], wx, wy) + 0.5) as u8;
        }
    }
    fit.letterbox
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::model::Layout;

    fn spec(w: u32, h: u32, color: ColorOrder, resize: Resize) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: w,
            height: h,
            color,
            layout: Layout::Nchw,
            resize,
            pad_value: 0.0,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        }
    }

    #[test]
    fn known_pixel_lands_in_each_plane_normalised() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([110, 120, 130]));
        let mut t = Tensor::zeros(&[1]);
        prepare(&img, &spec(4, 2, ColorOrder::Rgb, Resize::Stretch), &mut t);
        assert_eq!(t.shape, vec![1, 3, 2, 4]);
        assert_eq!(&t.data[0..1], &[50.0]); // (110-10)/2
        assert_eq!(&t.data[8..9], &[25.0]); // (120-20)/4
        assert_eq!(&t.data[16..17], &[20.0]); // (130-30)/5
    }

    #[test]
    fn bgr_order_swaps_planes_with_their_own_normalisation() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([110, 120, 130]));
        let mut t = Tensor::zeros(&[1]);
        prepare(&img, &spec(2, 2, ColorOrder::Bgr, Resize::Stretch), &mut t);
        assert_eq!(t.data[0], 20.0); // blue first: (130-30)/5
        assert_eq!(t.data[8], 50.0);
    }

    #[test]
    fn letterbox_pads_bottom_and_maps_boxes_back() {
        // 8x4 frame into an 8x8 input: scale 1, padding rows 4..8.
        let img = RgbImage::from_pixel(8, 4, image::Rgb([10, 20, 30]));
        let mut t = Tensor::zeros(&[1]);
        let lb = prepare(&img, &spec(8, 8, ColorOrder::Rgb, Resize::Letterbox), &mut t);
        assert_eq!(t.data[0], 0.0); // (10-10)/2 inside the image
        assert_eq!(t.data[5 * 8], -5.0); // pad (0-10)/2 below it
        assert_eq!(lb.to_frame([0.0, 0.0, 8.0, 8.0]), [0.0, 0.0, 8.0, 4.0]);
        // 16x8 frame into 8x8: scale 0.5; model box doubles back.
        let img = RgbImage::new(16, 8);
        let lb = prepare(&img, &spec(8, 8, ColorOrder::Rgb, Resize::Letterbox), &mut t);
        assert_eq!(lb.to_frame([1.0, 1.0, 2.0, 3.0]), [2.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn tensor_back_to_rgb_is_the_letterboxed_frame_with_its_padding() {
        // 4x2 frame into an 8x8 BGR input: scale 2, content 8x4, pad below.
        let img = RgbImage::from_pixel(4, 2, image::Rgb([110, 120, 130]));
        let mut s = spec(8, 8, ColorOrder::Bgr, Resize::Letterbox);
        s.pad_value = 7.0;
        let mut t = Tensor::zeros(&[1]);
        prepare(&img, &s, &mut t);
        assert_eq!(fitted_size((4, 2), &s), (8, 4));
        let back = tensor_to_rgb(&t, &s).unwrap();
        assert_eq!(back.dimensions(), (8, 8));
        assert_eq!(back.get_pixel(7, 3).0, [110, 120, 130]);
        assert_eq!(back.get_pixel(0, 4).0, [7, 7, 7]);
        assert_eq!(back.get_pixel(7, 7).0, [7, 7, 7]);
        // A tensor of another shape is refused, not misread.
        assert!(tensor_to_rgb(&Tensor::zeros(&[1, 3, 4, 4]), &s).is_none());
        assert_eq!(fitted_size((4, 2), &spec(8, 8, ColorOrder::Rgb, Resize::Stretch)), (8, 8));
    }

    /// A frame with distinct values per pixel and channel.
    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 5 + x * 3) as u8, (x * y) as u8]))
    }

    #[test]
    fn uint8_nhwc_is_the_float_path_rounded_without_normalisation() {
        for (frame, resize, color) in [
            ((37, 23), Resize::Letterbox, ColorOrder::Rgb),
            ((64, 40), Resize::Stretch, ColorOrder::Bgr),
            ((13, 31), Resize::Letterbox, ColorOrder::Bgr),
        ] {
            let img = gradient(frame.0, frame.1);
            let mut s = spec(16, 12, color, resize);
            s.mean = [0.0; 3];
            s.std = [1.0; 3];
            s.pad_value = 114.0;
            let (mut t, mut u) = (Tensor::zeros(&[1]), Vec::new());
            let lb_f = prepare(&img, &s, &mut t);
            // Normalisation in the spec must not reach the bytes.
            s.mean = [10.0, 20.0, 30.0];
            s.std = [2.0, 4.0, 5.0];
            let lb_u = prepare_u8_nhwc(&img, &s, &mut u);
            assert_eq!(lb_f, lb_u, "{frame:?}");
            assert_eq!(u.len(), 16 * 12 * 3);
            for y in 0..12 {
                for x in 0..16 {
                    for c in 0..3 {
                        let f = t.data[c * 16 * 12 + y * 16 + x];
                        let b = u[(y * 16 + x) * 3 + c];
                        assert!((f - b as f32).abs() <= 0.5, "{frame:?} ({x},{y}) c{c}: float {f}, byte {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn uint8_nhwc_copies_a_frame_at_the_model_size_and_pads_with_the_pad_value() {
        let img = gradient(8, 4);
        let mut s = spec(8, 8, ColorOrder::Rgb, Resize::Letterbox);
        s.pad_value = 114.4;
        let mut u = Vec::new();
        prepare_u8_nhwc(&img, &s, &mut u);
        assert_eq!(&u[..8 * 4 * 3], img.as_raw().as_slice(), "rows copied unchanged");
        assert!(u[8 * 4 * 3..].iter().all(|&b| b == 114), "padding rows");
        // BGR swaps bytes within each pixel; a reused buffer is overwritten whole.
        s.color = ColorOrder::Bgr;
        prepare_u8_nhwc(&img, &s, &mut u);
        assert_eq!(&u[..3], &[img.get_pixel(0, 0)[2], img.get_pixel(0, 0)[1], img.get_pixel(0, 0)[0]]);
        assert_eq!(u.len(), 8 * 8 * 3);
    }

    #[test]
    fn downscale_by_two_averages_pixel_pairs() {
        // 4x1 gradient 0, 100, 200, 250 → 2x1: half-pixel centres land
        // between source pixels 0|1 and 2|3.
        let mut img = RgbImage::new(4, 1);
        for (x, v) in [0u8, 100, 200, 250].into_iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([v, v, v]));
        }
        let mut s = spec(2, 1, ColorOrder::Rgb, Resize::Stretch);
        s.mean = [0.0; 3];
        s.std = [1.0; 3];
        let mut t = Tensor::zeros(&[1]);
        prepare(&img, &s, &mut t);
        assert_eq!(&t.data[0..2], &[50.0, 225.0]);
    }
}
