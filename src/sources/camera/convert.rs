//! Pure pixel-format conversion of camera buffers into RGB8 frames.
//!
//! Owns the formats cameras deliver: packed YUYV 4:2:2 (YUY2) and MJPEG
//! (one JPEG per buffer, often without Huffman tables) from UVC cameras,
//! and the 4:2:0 formats NV12 and YU12 (I420) that libcamera's ISP output
//! (CSI cameras through libcamerify) is usually offered in. No IO, no
//! device knowledge: a buffer, its size and stride in; an [`RgbImage`] out.
//!
//! - YUYV, NV12 and YU12 are converted with BT.601 limited-range ("studio
//!   swing", Y 16..235, Cb/Cr 16..240) coefficients in 8-bit fixed point,
//!   which is what UVC cameras send (the UVC spec's default colour matching
//!   descriptor is BT.601/SMPTE 170M) and what libcamera tags its
//!   SD-sized YUV output with.
//! - MJPEG: UVC devices may omit the DHT segment and rely on the standard
//!   tables of JPEG Annex K.3 (the AVI1/MJPEG convention). When a frame has no
//!   DHT before its first SOS, [`mjpeg_to_rgb`] inserts the standard one, so
//!   decoding does not depend on the decoder's own MJPEG fallback.

use std::io::Cursor;

use image::RgbImage;

/// The pixel formats the capture path understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 4:2:2 `Y0 U Y1 V`, 2 bytes per pixel (V4L2 `YUYV`).
    Yuyv,
    /// Motion JPEG: each buffer is one JPEG image (V4L2 `MJPG`).
    Mjpeg,
    /// 4:2:0, a Y plane then one plane of interleaved `U V` pairs at half
    /// width and height (V4L2 `NV12`, single-planar: both in one buffer).
    Nv12,
    /// 4:2:0, a Y plane, then a U plane and a V plane at half width and
    /// height (V4L2 `YU12`, also called I420).
    Yu12,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Yu12 => *b"YU12",
        }
    }

    pub fn from_fourcc(code: &[u8; 4]) -> Option<Self> {
        match code {
            b"YUYV" | b"YUY2" => Some(PixelFormat::Yuyv),
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            b"NV12" => Some(PixelFormat::Nv12),
            b"YU12" | b"I420" => Some(PixelFormat::Yu12),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Yu12 => "yu12",
        }
    }

    /// The config spelling (`camera.pixel_format`) of a format, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Yu12]
            .into_iter()
            .find(|f| f.as_str() == name)
    }

    /// Bytes of one row of the (first) plane: the smallest valid
    /// `bytesperline`. MJPEG has no rows.
    pub fn min_stride(self, width: u32) -> usize {
        match self {
            PixelFormat::Yuyv => 2 * width as usize,
            PixelFormat::Nv12 | PixelFormat::Yu12 => width as usize,
            PixelFormat::Mjpeg => 0,
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} frame {width}x{height} (stride {stride}) needs {needed} bytes, buffer has {got}")]
    ShortBuffer { format: &'static str, width: u32, height: u32, stride: usize, needed: usize, got: usize },
    #[error(
        "{format} frame size {width}x{height} invalid (sizes must be even and non-zero, the stride at least one row)"
    )]
    BadGeometry { format: &'static str, width: u32, height: u32 },
    #[error("{format} frames are compressed: no YUV planes to sample")]
    NotRawYuv { format: &'static str },
    #[error("MJPEG buffer is not a JPEG: {0}")]
    NotJpeg(&'static str),
    #[error("decoding an MJPEG frame")]
    Decode(#[source] image::ImageError),
}

/// Where the samples of a raw YUV frame lie in its buffer, once its
/// geometry and size are checked ([`yuv_layout`]): luma `(x, y)` is at
/// `y * stride + x * y_step`; chroma `(cx, cy)` (`cx = x / 2`; `cy = y / 2`
/// for 4:2:0, `y` for YUYV) at `u_off` / `v_off` `+ cy * c_stride + cx * c_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YuvLayout {
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub y_step: usize,
    pub u_off: usize,
    pub v_off: usize,
    pub c_stride: usize,
    pub c_step: usize,
    /// Chroma has half as many rows as luma (4:2:0), not as many (4:2:2).
    pub c_half_rows: bool,
}

impl YuvLayout {
    /// Chroma row of luma row `y`.
    #[inline(always)]
    pub fn chroma_row(&self, y: usize) -> usize {
        if self.c_half_rows { y / 2 } else { y }
    }

    /// Luma row `y`: exactly the bytes of its `width` samples.
    #[inline(always)]
    pub fn luma<'a>(&self, src: &'a [u8], y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &src[start..start + (self.width - 1) * self.y_step + 1]
    }

    /// The U and V samples of chroma row `cy`, each slice starting at the
    /// row's first sample and ending at its last.
    #[inline(always)]
    pub fn chroma<'a>(&self, src: &'a [u8], cy: usize) -> (&'a [u8], &'a [u8]) {
        let len = (self.width / 2 - 1) * self.c_step + 1;
        let (u, v) = (self.u_off + cy * self.c_stride, self.v_off + cy * self.c_stride);
        (&src[u..u + len], &src[v..v + len])
    }
}

/// Checks a raw YUV frame's geometry against its buffer: sizes even (4:2:0:
/// both, YUYV: the width) and non-zero, the stride at least one row, the
/// buffer long enough for the last sample. Never panics, whatever the
/// numbers (sizes that overflow are bad geometry). MJPEG has no layout.
pub(crate) fn yuv_layout(
    format: PixelFormat,
    len: usize,
    width: u32,
    height: u32,
    stride: usize,
) -> Result<YuvLayout, ConvertError> {
    let name = match format {
        PixelFormat::Yuyv => "YUYV",
        PixelFormat::Nv12 => "NV12",
        PixelFormat::Yu12 => "YU12",
        PixelFormat::Mjpeg => return Err(ConvertError::NotRawYuv { format: "MJPEG" }),
    };
    let bad = ConvertError::BadGeometry { format: name, width, height };
    let (w, h) = (width as usize, height as usize);
    let planar = matches!(format, PixelFormat::Yu12);
    if w == 0
        || h == 0
        || !w.is_multiple_of(2)
        || (format != PixelFormat::Yuyv && !h.is_multiple_of(2))
        || stride < format.min_stride(width)
        || (planar && !stride.is_multiple_of(2))
    {
        return Err(bad);
    }
    // (layout, bytes needed: the last row needs only its samples, not a full stride)
    let sized = || -> Option<(YuvLayout, usize)> {
        if format == PixelFormat::Yuyv {
            let needed = stride.checked_mul(h - 1)?.checked_add(2 * w)?;
            let l = YuvLayout {
                width: w,
                height: h,
                stride,
                y_step: 2,
                u_off: 1,
                v_off: 3,
                c_stride: stride,
                c_step: 4,
                c_half_rows: false,
            };
            return Some((l, needed));
        }
        let y_size = stride.checked_mul(h)?;
        let c_stride = if planar { stride / 2 } else { stride };
        let (u_off, v_off, c_step) = if planar {
            (y_size, y_size.checked_add(c_stride.checked_mul(h / 2)?)?, 1)
        } else {
            (y_size, y_size + 1, 2)
        };
        let last_row = c_stride.checked_mul(h / 2 - 1)?;
        let needed = if planar {
            v_off.checked_add(last_row)?.checked_add(w / 2)?
        } else {
            y_size.checked_add(last_row)?.checked_add(w)?
        };
        let l = YuvLayout { width: w, height: h, stride, y_step: 1, u_off, v_off, c_stride, c_step, c_half_rows: true };
        Some((l, needed))
    };
    let (layout, needed) = sized().ok_or(bad)?;
    if len < needed {
        return Err(ConvertError::ShortBuffer { format: name, width, height, stride, needed, got: len });
    }
    Ok(layout)
}

/// Converts one raw YUV frame (layout checked) into `out`, resized to the
/// frame's size if it is not already.
pub(crate) fn yuv_to_rgb_into(src: &[u8], l: &YuvLayout, out: &mut RgbImage) {
    let (width, height) = (l.width as u32, l.height as u32);
    if out.dimensions() != (width, height) {
        *out = RgbImage::new(width, height);
    }
    let dst: &mut [u8] = out;
    // Whole-row slices and pairs of pixels sharing one chroma sample, one
    // loop per layout: no per-pixel index arithmetic or bounds checks in the
    // inner loops.
    let w = l.width;
    for (y, row_out) in dst.chunks_exact_mut(3 * w).enumerate() {
        let pairs = row_out.chunks_exact_mut(6);
        let crow = l.chroma_row(y) * l.c_stride;
        match (l.y_step, l.c_step) {
            // YUYV: `Y0 U Y1 V` per pair.
            (2, _) => {
                let row = &src[y * l.stride..y * l.stride + 2 * w];
                for (px, o) in row.chunks_exact(4).zip(pairs) {
                    yuv_pair(px[0], px[2], px[1], px[3], o);
                }
            }
            // NV12: `U V` pairs.
            (_, 2) => {
                let luma = &src[y * l.stride..y * l.stride + w];
                let uv = &src[l.u_off + crow..l.u_off + crow + w];
                for ((lp, o), c) in luma.chunks_exact(2).zip(pairs).zip(uv.chunks_exact(2)) {
                    yuv_pair(lp[0], lp[1], c[0], c[1], o);
                }
            }
            // YU12: U and V planes.
            _ => {
                let luma = &src[y * l.stride..y * l.stride + w];
                let u = &src[l.u_off + crow..l.u_off + crow + w / 2];
                let v = &src[l.v_off + crow..l.v_off + crow + w / 2];
                for (((lp, o), &cu), &cv) in luma.chunks_exact(2).zip(pairs).zip(u).zip(v) {
                    yuv_pair(lp[0], lp[1], cu, cv, o);
                }
            }
        }
    }
}

/// Converts one YUYV frame into `out` (resized to `width`x`height` if it is
/// not already). `stride` is the byte length of one source row (V4L2
/// `bytesperline`), at least `2 * width`.
pub fn yuyv_to_rgb_into(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    out: &mut RgbImage,
) -> Result<(), ConvertError> {
    let layout = yuv_layout(PixelFormat::Yuyv, src.len(), width, height, stride)?;
    yuv_to_rgb_into(src, &layout, out);
    Ok(())
}

/// Converts one YUYV frame into a new image.
pub fn yuyv_to_rgb(src: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
    let mut out = RgbImage::new(width, height);
    yuyv_to_rgb_into(src, width, height, stride, &mut out)?;
    Ok(out)
}

#[inline(always)]
fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited range ("studio swing") to RGB8 in fixed point, the one
/// place its coefficients live. `y`, `u`, `v` carry `frac` fractional bits
/// (0 for bytes; the fused resize passes interpolated samples with more so
/// it rounds once). `frac` at most 12 keeps every product inside `i32`.
///
/// R = 1.164(Y-16) + 1.596(V-128), G = 1.164(Y-16) - 0.392(U-128) -
/// 0.813(V-128), B = 1.164(Y-16) + 2.017(U-128), each coefficient x256.
#[inline(always)]
pub(crate) fn bt601_to_rgb(y: i32, u: i32, v: i32, frac: u32) -> [u8; 3] {
    let (d, e) = (u - (128 << frac), v - (128 << frac));
    let c = 298 * (y - (16 << frac));
    let (shift, half) = (8 + frac, 1 << (7 + frac));
    [
        clamp8((c + 409 * e + half) >> shift),
        clamp8((c - 100 * d - 208 * e + half) >> shift),
        clamp8((c + 516 * d + half) >> shift),
    ]
}

/// Two horizontally adjacent pixels sharing one chroma sample, into `o[..6]`.
#[inline(always)]
fn yuv_pair(y0: u8, y1: u8, u: u8, v: u8, o: &mut [u8]) {
    o[..3].copy_from_slice(&bt601_to_rgb(y0 as i32, u as i32, v as i32, 0));
    o[3..6].copy_from_slice(&bt601_to_rgb(y1 as i32, u as i32, v as i32, 0));
}

fn yuv420_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
) -> Result<RgbImage, ConvertError> {
    let layout = yuv_layout(format, src.len(), width, height, stride)?;
    let mut out = RgbImage::new(width, height);
    yuv_to_rgb_into(src, &layout, &mut out);
    Ok(out)
}

/// Converts one NV12 frame (Y plane of `stride * height` bytes, then the
/// interleaved `U V` plane with the same row stride).
pub fn nv12_to_rgb(src: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
    yuv420_to_rgb(src, width, height, stride, PixelFormat::Nv12)
}

/// Converts one YU12/I420 frame (Y plane of `stride * height` bytes, then
/// U and V planes with rows of `stride / 2` bytes).
pub fn yu12_to_rgb(src: &[u8], width: u32, height: u32, stride: usize) -> Result<RgbImage, ConvertError> {
    yuv420_to_rgb(src, width, height, stride, PixelFormat::Yu12)
}

/// Decodes one MJPEG buffer into RGB8, inserting the standard Huffman tables
/// when the frame carries none. The image has the JPEG's own size.
pub fn mjpeg_to_rgb(data: &[u8]) -> Result<RgbImage, ConvertError> {
    let scan = scan_jpeg(data)?;
    let decoded =
        if scan.has_dht { decode_jpeg(data)? } else { decode_jpeg(&with_standard_dht(data, scan.sos_offset))? };
    Ok(decoded)
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, ConvertError> {
    let decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes)).map_err(ConvertError::Decode)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(ConvertError::Decode)?;
    Ok(img.into_rgb8())
}

/// What a walk over the JPEG header segments found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegScan {
    /// A DHT segment appears before the first SOS.
    pub has_dht: bool,
    /// Byte offset of the first SOS marker (`FF DA`).
    pub sos_offset: usize,
}

/// Walks the marker segments from SOI to the first SOS.
pub fn scan_jpeg(data: &[u8]) -> Result<JpegScan, ConvertError> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(ConvertError::NotJpeg("no SOI marker"));
    }
    let mut has_dht = false;
    let mut i = 2;
    loop {
        if i + 2 > data.len() {
            return Err(ConvertError::NotJpeg("no SOS marker before the end of the buffer"));
        }
        if data[i] != 0xFF {
            return Err(ConvertError::NotJpeg("segment does not start with a marker"));
        }
        let marker = data[i + 1];
        match marker {
            0xFF => {
                i += 1; // fill byte
                continue;
            }
            0xDA => return Ok(JpegScan { has_dht, sos_offset: i }),
            0xD9 => return Err(ConvertError::NotJpeg("EOI before any SOS")),
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            0xC4 => has_dht = true,
            _ => {}
        }
        if i + 4 > data.len() {
            return Err(ConvertError::NotJpeg("truncated segment header"));
        }
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        if len < 2 {
            return Err(ConvertError::NotJpeg("segment length below 2"));
        }
        i += 2 + len;
    }
}

/// `data` with [`STANDARD_DHT`] inserted before the SOS at `sos_offset`.
pub fn with_standard_dht(data: &[u8], sos_offset: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + STANDARD_DHT.len());
    out.extend_from_slice(&data[..sos_offset]);
    out.extend_from_slice(&STANDARD_DHT);
    out.extend_from_slice(&data[sos_offset..]);
    out
}

/// The four standard Huffman tables of JPEG Annex K.3 (luminance DC and AC,
/// chrominance DC and AC) as one DHT segment: what MJPEG streams without a
/// DHT (UVC, AVI1) are encoded with.
pub static STANDARD_DHT: [u8; 420] = build_standard_dht();

const LUMA_DC_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const CHROMA_DC_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const LUMA_AC_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
const LUMA_AC_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, //
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, //
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28, //
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, //
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, //
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, //
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, //
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, //
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, //
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, //
    0xF9, 0xFA,
];
const CHROMA_AC_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const CHROMA_AC_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, //
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0, //
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26, //
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, //
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, //
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, //
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, //
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, //
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, //
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, //
    0xF9, 0xFA,
];

/// Marker (2) + length (2) + 4 tables of (class/id byte + 16 counts +
/// values): 2 + 2 + (1+16+12) * 2 + (1+16+162) * 2 = 420 bytes.
const fn build_standard_dht() -> [u8; 420] {
    let mut out = [0u8; 420];
    out[0] = 0xFF;
    out[1] = 0xC4;
    let len: u16 = 418; // everything after the marker
    out[2] = (len >> 8) as u8;
    out[3] = (len & 0xFF) as u8;
    let mut i = 4;
    i = put_table(&mut out, i, 0x00, &LUMA_DC_BITS, &DC_VALUES);
    i = put_table(&mut out, i, 0x10, &LUMA_AC_BITS, &LUMA_AC_VALUES);
    i = put_table(&mut out, i, 0x01, &CHROMA_DC_BITS, &DC_VALUES);
    i = put_table(&mut out, i, 0x11, &CHROMA_AC_BITS, &CHROMA_AC_VALUES);
    assert!(i == 420);
    out
}

const fn put_table(out: &mut [u8; 420], mut i: usize, class_id: u8, bits: &[u8; 16], values: &[u8]) -> usize {
    out[i] = class_id;
    i += 1;
    let mut k = 0;
    let mut count = 0usize;
    while k < 16 {
        out[i] = bits[k];
        count += bits[k] as usize;
        i += 1;
        k += 1;
    }
    assert!(count == values.len());
    k = 0;
    while k < values.len() {
        out[i] = values[k];
        i += 1;
        k += 1;
    }
    i
}

/// A raw YUYV/NV12/YU12 camera buffer, owned and checked against its
/// geometry when made ([`RawYuv::new`]), so inference can sample it
/// straight into the model input without reading out of bounds and
/// without an RGB copy of the whole frame.
#[derive(Clone, PartialEq, Eq)]
pub struct RawYuv {
    format: PixelFormat,
    data: Vec<u8>,
    layout: YuvLayout,
}

impl std::fmt::Debug for RawYuv {
    // The buffer is megabytes of samples: name it, do not print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawYuv")
            .field("format", &self.format)
            .field("size", &(self.layout.width, self.layout.height))
            .field("stride", &self.layout.stride)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl RawYuv {
    /// `stride` is the byte length of one row of the first plane (V4L2
    /// `bytesperline`). MJPEG, odd sizes, a stride under one row and a
    /// short buffer are errors, as for the conversions.
    pub fn new(
        format: PixelFormat,
        data: Vec<u8>,
        width: u32,
        height: u32,
        stride: usize,
    ) -> Result<Self, ConvertError> {
        let layout = yuv_layout(format, data.len(), width, height, stride)?;
        Ok(Self { format, data, layout })
    }

    pub fn format(&self) -> PixelFormat {
        self.format
    }

    pub fn dimensions(&self) -> (u32, u32) {
        (self.layout.width as u32, self.layout.height as u32)
    }

    pub fn stride(&self) -> usize {
        self.layout.stride
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn layout(&self) -> &YuvLayout {
        &self.layout
    }

    /// The buffer back, for the next frame to be copied into.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The whole frame as RGB8, for consumers that need a picture.
    pub fn to_rgb(&self) -> RgbImage {
        let mut out = RgbImage::new(0, 0);
        yuv_to_rgb_into(&self.data, &self.layout, &mut out);
        out
    }
}

/// Converts one captured buffer of `format` into RGB8. For MJPEG the
/// image's own size wins over `width`/`height`.
pub fn to_rgb(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, ConvertError> {
    match format {
        PixelFormat::Yuyv => yuyv_to_rgb(data, width, height, stride),
        PixelFormat::Mjpeg => mjpeg_to_rgb(data),
        PixelFormat::Nv12 => nv12_to_rgb(data, width, height, stride),
        PixelFormat::Yu12 => yu12_to_rgb(data, width, height, stride),
    }
}

/// Straightforward per-pixel `f64` BT.601 limited-range YUYV conversion: the
/// reference the fixed-point path is tested and benchmarked against.
pub fn yuyv_to_rgb_reference(src: &[u8], width: u32, height: u32, stride: usize) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let base = y * stride + (x / 2) * 4;
            let luma = src[base + if x % 2 == 0 { 0 } else { 2 }] as f64;
            let u = src[base + 1] as f64 - 128.0;
            let v = src[base + 3] as f64 - 128.0;
            let c = 1.164 * (luma - 16.0);
            let r = c + 1.596 * v;
            let g = c - 0.392 * u - 0.813 * v;
            let b = c + 2.017 * u;
            let q = |f: f64| f.round().clamp(0.0, 255.0) as u8;
            out.put_pixel(x as u32, y as u32, image::Rgb([q(r), q(g), q(b)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;

    /// YUYV bytes for `pixels` (pairs share U and V).
    fn yuyv(pairs: &[(u8, u8, u8, u8)]) -> Vec<u8> {
        pairs.iter().flat_map(|&(y0, u, y1, v)| [y0, u, y1, v]).collect()
    }

    fn assert_close(got: [u8; 3], want: [u8; 3], tol: i32, what: &str) {
        for c in 0..3 {
            assert!((got[c] as i32 - want[c] as i32).abs() <= tol, "{what}: got {got:?}, want {want:?} (±{tol})");
        }
    }

    #[test]
    fn yuyv_bt601_limited_range_known_colours() {
        // Standard BT.601 limited-range codes of black, white and the
        // 100% primaries (ITU-R BT.601 / SMPTE EG 1 colour bars).
        type Case = ((u8, u8, u8), [u8; 3], &'static str);
        let cases: [Case; 5] = [
            ((16, 128, 128), [0, 0, 0], "black"),
            ((235, 128, 128), [255, 255, 255], "white"),
            ((81, 90, 240), [255, 0, 0], "red"),
            ((145, 54, 34), [0, 255, 0], "green"),
            ((41, 240, 110), [0, 0, 255], "blue"),
        ];
        let pairs: Vec<_> = cases.iter().map(|&((y, u, v), _, _)| (y, u, y, v)).collect();
        let src = yuyv(&pairs);
        let img = yuyv_to_rgb(&src, 10, 1, 20).unwrap();
        for (i, (_, want, name)) in cases.iter().enumerate() {
            assert_close(img.get_pixel(2 * i as u32, 0).0, *want, 2, name);
            assert_close(img.get_pixel(2 * i as u32 + 1, 0).0, *want, 2, name);
        }
        // Below-black and above-white codes clamp instead of wrapping.
        let img = yuyv_to_rgb(&yuyv(&[(0, 128, 255, 128)]), 2, 1, 4).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
    }

    #[test]
    fn yuyv_pixel_pairs_share_chroma_but_keep_their_luma() {
        // Mid grey, then a brighter grey in the same macro-pixel.
        let img = yuyv_to_rgb(&yuyv(&[(126, 128, 180, 128)]), 2, 1, 4).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [128, 128, 128]); // 1.164*(126-16) = 128.0
        assert_eq!(img.get_pixel(1, 0).0, [191, 191, 191]); // 1.164*164 = 190.9
    }

    #[test]
    fn yuyv_matches_the_f64_reference_within_one_step_everywhere() {
        // Every Y with a sweep of U and V, in a frame whose rows are padded.
        let (w, h, stride) = (64u32, 32u32, 64 * 2 + 16);
        let mut src = vec![0u8; stride * h as usize];
        let mut rng = fastrand::Rng::with_seed(7);
        for b in src.iter_mut() {
            *b = rng.u8(..);
        }
        let fast = yuyv_to_rgb(&src, w, h, stride).unwrap();
        let slow = yuyv_to_rgb_reference(&src, w, h, stride);
        for (a, b) in fast.pixels().zip(slow.pixels()) {
            assert_close(a.0, b.0, 1, "fixed point vs f64");
        }
    }

    #[test]
    fn yuyv_rejects_short_buffers_and_odd_widths() {
        assert!(matches!(yuyv_to_rgb(&[0; 7], 2, 2, 4), Err(ConvertError::ShortBuffer { needed: 8, .. })));
        // The last row may stop after its pixels (no trailing stride padding).
        assert!(yuyv_to_rgb(&[16, 128, 16, 128, 0, 0, 16, 128, 16, 128], 2, 2, 6).is_ok());
        assert!(matches!(yuyv_to_rgb(&[0; 12], 3, 1, 6), Err(ConvertError::BadGeometry { .. })));
        assert!(matches!(yuyv_to_rgb(&[0; 12], 2, 1, 3), Err(ConvertError::BadGeometry { .. })));
    }

    fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).unwrap();
        out
    }

    /// The JPEG without any DHT segment, as many UVC cameras send it.
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        loop {
            let marker = jpeg[i + 1];
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[i..]);
                return out;
            }
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if marker != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }

    #[test]
    fn mjpeg_solid_colour_decodes_to_its_pixels() {
        for colour in [[200u8, 30, 60], [20, 180, 90], [128, 128, 128]] {
            let img = RgbImage::from_pixel(64, 48, image::Rgb(colour));
            let out = mjpeg_to_rgb(&encode_jpeg(&img, 95)).unwrap();
            assert_eq!(out.dimensions(), (64, 48));
            for p in out.pixels() {
                assert_close(p.0, colour, 4, "solid colour through JPEG");
            }
        }
    }

    #[test]
    fn mjpeg_without_huffman_tables_decodes_like_the_original() {
        // A gradient, so the entropy-coded data exercises many codes.
        let img = RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) * 2) as u8]));
        let full = encode_jpeg(&img, 85);
        let bare = strip_dht(&full);
        let scan = scan_jpeg(&bare).unwrap();
        assert!(!scan.has_dht);
        assert!(scan_jpeg(&full).unwrap().has_dht);
        // Four DHT segments (marker and length each) held the 416 table bytes.
        assert_eq!(full.len() - bare.len(), 4 * 4 + (STANDARD_DHT.len() - 4));
        let want = mjpeg_to_rgb(&full).unwrap();
        let got = mjpeg_to_rgb(&bare).unwrap();
        assert_eq!(got.as_raw(), want.as_raw());
    }

    #[test]
    fn standard_dht_equals_the_tables_a_jpeg_encoder_writes() {
        // image's encoder writes the Annex K tables as four DHT segments;
        // their payloads, concatenated, must equal ours.
        let jpeg = encode_jpeg(&RgbImage::new(8, 8), 90);
        let mut payload = Vec::new();
        let mut i = 2;
        while jpeg[i + 1] != 0xDA {
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if jpeg[i + 1] == 0xC4 {
                payload.extend_from_slice(&jpeg[i + 4..i + 2 + len]);
            }
            i += 2 + len;
        }
        // Same tables; the encoder's order is luma DC, luma AC, chroma DC, chroma AC.
        assert_eq!(payload.len(), STANDARD_DHT.len() - 4);
        assert_eq!(&payload[..], &STANDARD_DHT[4..]);
    }

    #[test]
    fn not_a_jpeg_is_an_error_not_a_panic() {
        assert!(matches!(mjpeg_to_rgb(b"hello"), Err(ConvertError::NotJpeg(_))));
        assert!(matches!(mjpeg_to_rgb(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]), Err(ConvertError::NotJpeg(_))));
        assert!(matches!(mjpeg_to_rgb(&[0xFF, 0xD8, 0xFF, 0xD9]), Err(ConvertError::NotJpeg(_))));
        // A truncated scan decodes or fails, but never panics.
        let jpeg = encode_jpeg(&RgbImage::from_pixel(32, 32, image::Rgb([9, 9, 9])), 80);
        let _ = mjpeg_to_rgb(&jpeg[..jpeg.len() / 2]);
    }

    #[test]
    fn fourcc_round_trip() {
        for f in [PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Nv12, PixelFormat::Yu12] {
            assert_eq!(PixelFormat::from_fourcc(&f.fourcc()), Some(f));
            assert_eq!(PixelFormat::from_name(f.as_str()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(b"I420"), Some(PixelFormat::Yu12));
        assert_eq!(PixelFormat::from_fourcc(b"H264"), None);
        assert_eq!(PixelFormat::from_name("auto"), None);
    }

    /// The colour-bar codes of `yuyv_bt601_limited_range_known_colours`:
    /// (Y, U, V) and the RGB they stand for.
    type Bar = ((u8, u8, u8), [u8; 3], &'static str);
    const BARS: [Bar; 5] = [
        ((16, 128, 128), [0, 0, 0], "black"),
        ((235, 128, 128), [255, 255, 255], "white"),
        ((81, 90, 240), [255, 0, 0], "red"),
        ((145, 54, 34), [0, 255, 0], "green"),
        ((41, 240, 110), [0, 0, 255], "blue"),
    ];

    /// A 4:2:0 frame of `BARS` as 2x2 blocks side by side (10x2 pixels),
    /// rows padded to `stride`: (NV12, YU12) buffers.
    fn bars_420(stride: usize) -> (Vec<u8>, Vec<u8>) {
        let (w, h) = (2 * BARS.len(), 2);
        let mut luma = vec![0u8; stride * h];
        for (i, ((y, _, _), _, _)) in BARS.iter().enumerate() {
            for row in 0..h {
                luma[row * stride + 2 * i] = *y;
                luma[row * stride + 2 * i + 1] = *y;
            }
        }
        let mut nv12 = luma.clone();
        let mut uv = vec![0u8; stride]; // one chroma row
        for (i, ((_, u, v), _, _)) in BARS.iter().enumerate() {
            uv[2 * i] = *u;
            uv[2 * i + 1] = *v;
        }
        nv12.extend_from_slice(&uv);
        let mut yu12 = luma;
        let mut u_plane = vec![0u8; stride / 2];
        let mut v_plane = vec![0u8; stride / 2];
        for (i, ((_, u, v), _, _)) in BARS.iter().enumerate() {
            u_plane[i] = *u;
            v_plane[i] = *v;
        }
        yu12.extend_from_slice(&u_plane);
        yu12.extend_from_slice(&v_plane);
        assert_eq!(w, 10);
        (nv12, yu12)
    }

    #[test]
    fn nv12_and_yu12_bt601_limited_range_known_colours() {
        for stride in [10usize, 16] {
            let (nv12, yu12) = bars_420(stride);
            let a = nv12_to_rgb(&nv12, 10, 2, stride).unwrap();
            let b = yu12_to_rgb(&yu12, 10, 2, stride).unwrap();
            for (i, (_, want, name)) in BARS.iter().enumerate() {
                for (x, y) in [(2 * i, 0), (2 * i + 1, 0), (2 * i, 1), (2 * i + 1, 1)] {
                    assert_close(a.get_pixel(x as u32, y).0, *want, 2, name);
                    assert_close(b.get_pixel(x as u32, y).0, *want, 2, name);
                }
            }
            // Same samples, same arithmetic: the three YUV paths agree exactly.
            assert_eq!(a.as_raw(), b.as_raw());
        }
    }

    #[test]
    fn nv12_matches_yuyv_when_chroma_is_shared_by_2x2_blocks() {
        // Random luma; chroma constant over each 2x2 block, so YUYV (4:2:2)
        // carries the same information and must give the same pixels.
        let (w, h) = (16usize, 8usize);
        let mut rng = fastrand::Rng::with_seed(11);
        let luma: Vec<u8> = (0..w * h).map(|_| rng.u8(..)).collect();
        let chroma: Vec<(u8, u8)> = (0..(w / 2) * (h / 2)).map(|_| (rng.u8(..), rng.u8(..))).collect();
        let mut nv12 = luma.clone();
        for &(u, v) in &chroma {
            nv12.extend_from_slice(&[u, v]);
        }
        let mut yuyv = Vec::new();
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let (u, v) = chroma[(y / 2) * (w / 2) + x / 2];
                yuyv.extend_from_slice(&[luma[y * w + x], u, luma[y * w + x + 1], v]);
            }
        }
        let a = nv12_to_rgb(&nv12, w as u32, h as u32, w).unwrap();
        let b = yuyv_to_rgb(&yuyv, w as u32, h as u32, 2 * w).unwrap();
        assert_eq!(a.as_raw(), b.as_raw());
        // And both stay within one step of the f64 reference.
        let reference = yuyv_to_rgb_reference(&yuyv, w as u32, h as u32, 2 * w);
        for (p, q) in a.pixels().zip(reference.pixels()) {
            assert_close(p.0, q.0, 1, "nv12 vs f64");
        }
    }

    #[test]
    fn yuv420_rejects_short_buffers_and_odd_sizes() {
        // 4x2 NV12: 8 luma + 4 chroma bytes.
        assert!(nv12_to_rgb(&[16; 12], 4, 2, 4).is_ok());
        assert!(matches!(
            nv12_to_rgb(&[16; 11], 4, 2, 4),
            Err(ConvertError::ShortBuffer { format: "NV12", needed: 12, .. })
        ));
        // 4x2 YU12: 8 luma + 2 U + 2 V.
        assert!(yu12_to_rgb(&[16; 12], 4, 2, 4).is_ok());
        assert!(matches!(yu12_to_rgb(&[16; 11], 4, 2, 4), Err(ConvertError::ShortBuffer { format: "YU12", .. })));
        for (w, h, stride) in [(3, 2, 4), (4, 3, 4), (4, 2, 3), (0, 2, 4)] {
            assert!(matches!(nv12_to_rgb(&[0; 64], w, h, stride), Err(ConvertError::BadGeometry { .. })));
        }
        assert!(matches!(yu12_to_rgb(&[0; 64], 4, 2, 5), Err(ConvertError::BadGeometry { .. })));
        assert!(to_rgb(PixelFormat::Nv12, &[16; 12], 4, 2, 4).is_ok());
    }
}
