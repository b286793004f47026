//! Pure image preparation: an RGB frame becomes the model's input tensor.
//!
//! Owns resizing (letterbox or stretch), channel order and normalisation, and
//! the inverse mapping of boxes back to frame pixels. No IO.

use image::RgbImage;
use image::imageops::{self, FilterType};

use crate::model::{ColorOrder, InputSpec, Resize};

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

/// Resizes `frame` as `spec` says and writes the normalised NCHW tensor into
/// `out` (reused across frames to avoid an allocation per frame).
pub fn prepare(frame: &RgbImage, spec: &InputSpec, out: &mut Tensor) -> Letterbox {
    let (tw, th) = (spec.width, spec.height);
    let (fw, fh) = frame.dimensions();
    let (nw, nh, sx, sy) = match spec.resize {
        Resize::Stretch => (tw, th, tw as f32 / fw as f32, th as f32 / fh as f32),
        Resize::Letterbox => {
            let s = (tw as f32 / fw as f32).min(th as f32 / fh as f32);
            let nw = ((fw as f32 * s).round() as u32).clamp(1, tw);
            let nh = ((fh as f32 * s).round() as u32).clamp(1, th);
            (nw, nh, nw as f32 / fw as f32, nh as f32 / fh as f32)
        }
    };
    let resized;
    let src: &RgbImage = if (nw, nh) == (fw, fh) {
        frame
    } else {
        resized = imageops::resize(frame, nw, nh, FilterType::Triangle);
        &resized
    };
    let (w, h) = (tw as usize, th as usize);
    let plane = w * h;
    out.shape.clear();
    out.shape.extend_from_slice(&[1, 3, h, w]);
    out.data.resize(3 * plane, 0.0);
    let pad: [f32; 3] = std::array::from_fn(|c| (spec.pad_value - spec.mean[c]) / spec.std[c]);
    let inv_std: [f32; 3] = std::array::from_fn(|c| 1.0 / spec.std[c]);
    // Output channel c takes source channel order[c].
    let order = match spec.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    let raw = src.as_raw();
    let (sw, sh) = (nw as usize, nh as usize);
    for y in 0..h {
        for x in 0..w {
            let o = y * w + x;
            if y < sh && x < sw {
                let p = (y * sw + x) * 3;
                for c in 0..3 {
                    let v = raw[p + order[c]] as f32;
                    out.data[c * plane + o] = (v - spec.mean[order[c]]) * inv_std[order[c]];
                }
            } else {
                for c in 0..3 {
                    out.data[c * plane + o] = pad[c];
                }
            }
        }
    }
    Letterbox { scale_x: sx, scale_y: sy, frame_width: fw, frame_height: fh }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Layout;

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
}
