//! Camera-like frames for tests and benches: the six demo photos, and raw
//! YUYV/NV12 buffers made from RGB pictures, for what feeds the capture
//! formats (the `convert`, `prepare_yuv`, `hailo_prepare` benches, the YUV
//! inference tests).

#![allow(dead_code)] // each bench uses its own subset

use image::RgbImage;

/// The six demo photos (scripts/setup.sh fetches them), as RGB8.
pub fn demo_photos() -> Vec<RgbImage> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"]
        .iter()
        .map(|f| image::open(dir.join(f)).expect("demo photo (run scripts/setup.sh)").to_rgb8())
        .collect()
}

/// RGB8 → YUYV with BT.601 limited-range coefficients (chroma averaged
/// over each pixel pair), to make a camera-like YUYV frame.
pub fn rgb_to_yuyv(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.width() as usize * img.height() as usize * 2);
    for row in img.rows() {
        let px: Vec<[f64; 3]> = row.map(|p| [p[0] as f64, p[1] as f64, p[2] as f64]).collect();
        for pair in px.chunks_exact(2) {
            let y = |p: [f64; 3]| 16.0 + 0.257 * p[0] + 0.504 * p[1] + 0.098 * p[2];
            let (a, b) = (pair[0], pair[1]);
            let m = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0];
            let u = 128.0 - 0.148 * m[0] - 0.291 * m[1] + 0.439 * m[2];
            let v = 128.0 + 0.439 * m[0] - 0.368 * m[1] - 0.071 * m[2];
            let q = |f: f64| f.round().clamp(0.0, 255.0) as u8;
            out.extend_from_slice(&[q(y(a)), q(u), q(y(b)), q(v)]);
        }
    }
    out
}

/// NV12 (stride = width) from a YUYV frame: its luma, and the chroma of
/// every even row.
pub fn yuyv_to_nv12(yuyv: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out: Vec<u8> = yuyv.chunks_exact(2).map(|p| p[0]).collect();
    for y in (0..h).step_by(2) {
        for pair in yuyv[y * 2 * w..(y + 1) * 2 * w].chunks_exact(4) {
            out.extend_from_slice(&[pair[1], pair[3]]);
        }
    }
    out
}
