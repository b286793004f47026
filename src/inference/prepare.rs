//! What the engines call to turn a frame into a model input: picks the RGB
//! kernels (`vision`) or the YUV ones (`vision_yuv`) for the pixels the
//! camera delivered. Both land a frame identically (same fit, padding,
//! channel order), so an engine never needs to know which it got. Pure.

use crate::inference::model::InputSpec;
use crate::inference::vision::{self, Letterbox, Tensor};
use crate::inference::vision_yuv::{self, YuvFrame};
use crate::sources::camera::PixelsRef;

/// The normalised float NCHW tensor (ONNX Runtime, FLOAT32 HEFs) into `out`.
pub fn tensor<'a>(frame: impl Into<PixelsRef<'a>>, spec: &InputSpec, out: &mut Tensor) -> Letterbox {
    match frame.into() {
        PixelsRef::Rgb(image) => vision::prepare(image, spec, out),
        PixelsRef::Yuv(raw) => vision_yuv::prepare_yuv(&YuvFrame::of(raw), spec, out),
    }
}

/// The uint8 NHWC `[H, W, 3]` input (UINT8 HEFs) into `out`.
pub fn u8_nhwc<'a>(frame: impl Into<PixelsRef<'a>>, spec: &InputSpec, out: &mut Vec<u8>) -> Letterbox {
    match frame.into() {
        PixelsRef::Rgb(image) => vision::prepare_u8_nhwc(image, spec, out),
        PixelsRef::Yuv(raw) => vision_yuv::prepare_yuv_u8_nhwc(&YuvFrame::of(raw), spec, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::camera::Pixels;
    use crate::sources::camera::convert::{PixelFormat, RawYuv};

    fn spec() -> InputSpec {
        InputSpec::model_zoo("x", 16, 16)
    }

    /// A flat grey YUYV frame (Y = 126, U = V = 128: RGB 128 in limited range).
    fn grey_yuyv(w: u32, h: u32) -> RawYuv {
        let data: Vec<u8> = (0..w * h / 2).flat_map(|_| [126, 128, 126, 128]).collect();
        RawYuv::new(PixelFormat::Yuyv, data, w, h, 2 * w as usize).expect("valid geometry")
    }

    #[test]
    fn a_yuv_frame_takes_the_yuv_kernels_and_lands_as_its_rgb_conversion_does() {
        let raw = grey_yuyv(32, 16);
        let rgb = Pixels::Rgb(raw.to_rgb());
        let yuv = Pixels::Yuv(raw);
        let (mut a, mut b) = (Tensor::zeros(&[1]), Tensor::zeros(&[1]));
        let la = tensor(&yuv, &spec(), &mut a);
        let lb = tensor(&rgb, &spec(), &mut b);
        assert_eq!(a.shape, b.shape);
        assert_eq!(la, lb);
        let worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1.0, "YUV and RGB paths differ by {worst}");
        let (mut u, mut v) = (Vec::new(), Vec::new());
        u8_nhwc(&yuv, &spec(), &mut u);
        u8_nhwc(&rgb, &spec(), &mut v);
        assert_eq!(u.len(), 16 * 16 * 3);
        assert!(u.iter().zip(&v).all(|(x, y)| x.abs_diff(*y) <= 1), "uint8 paths differ by more than rounding");
    }

    #[test]
    fn a_plain_picture_passes_as_it_is() {
        let image = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        u8_nhwc(&image, &spec(), &mut a);
        vision::prepare_u8_nhwc(&image, &spec(), &mut b);
        assert_eq!(a, b);
    }
}
