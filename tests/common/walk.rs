//! The walking-person replay of the events tests and benches: a person cut
//! from the scikit-image astronaut photo in models/demo, pasted on a plain
//! grey background, walks left to right across the frame and back, over
//! and over.

use std::path::Path;

use image::{Rgb, RgbImage, imageops};

/// Frames per pass (one pass: one side to the other).
pub const PASS: u64 = 16;
pub const W: u32 = 640;
pub const H: u32 = 480;
/// The pasted person's size and top.
pub const PW: u32 = 170;
pub const PH: u32 = 250;
pub const TOP: u32 = 200;

/// The person's left edge on frame `number` (1-based, as the replay camera
/// counts): odd passes go left to right, even ones come back.
pub fn person_x(number: u64) -> u32 {
    let i = (number - 1) % (2 * PASS);
    let step = if i < PASS { i } else { 2 * PASS - 1 - i };
    20 + (step as u32) * (W - 40 - PW) / (PASS as u32 - 1)
}

/// Writes one back-and-forth walk (2 × [`PASS`] frames, `walk-NNN.png`)
/// into `dir`. `noisy_band`: the top 150 rows are noise, far above the
/// person, so each JPEG of a frame is large.
pub fn write_walk(dir: &Path, noisy_band: bool) {
    let photo = image::open(super::repo().join("models/demo/astronaut.png")).expect("astronaut photo").to_rgb8();
    // Eileen Collins from the waist up, as the model tests find her.
    let cut = imageops::crop_imm(&photo, 20, 10, 345, 502).to_image();
    let person = imageops::resize(&cut, PW, PH, imageops::FilterType::Triangle);
    std::fs::create_dir_all(dir).expect("creating the walk folder");
    let mut state = 0x2545_f491_u32;
    for n in 1..=2 * PASS {
        let mut frame = RgbImage::from_pixel(W, H, Rgb([128, 128, 128]));
        if noisy_band {
            for y in 0..150 {
                for x in 0..W {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let [a, b, c, _] = state.to_le_bytes();
                    frame.put_pixel(x, y, Rgb([a, b, c]));
                }
            }
        }
        imageops::replace(&mut frame, &person, person_x(n) as i64, TOP as i64);
        frame.save(dir.join(format!("walk-{n:03}.png"))).expect("writing a walk frame");
    }
}
