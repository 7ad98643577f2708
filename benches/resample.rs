//! Time of preprocessing one frame into a 224x224 model input with float (`f32`, the default)
//! against 8-bit (`u8`) resampling, on synthetic frames of common sizes:
//! `cargo bench --bench resample` (part of `make bench`). Prints the best of 5 runs of 50 frames.

use gstlogsad::detect::preprocess::{Preprocessor, Resample, RgbImage};
use gstlogsad::detect::tiling::Tiling;
use gstlogsad::engine::manifest::InputSpec;
use std::time::Instant;

fn main() {
    let input = InputSpec {
        name: "x".into(),
        width: 224,
        height: 224,
        layout: "NCHW".into(),
        channels: "RGB".into(),
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let mut pre = Preprocessor::new(&input);
    let mut seed = 1u32;
    let frames = [(250, 250), (640, 480), (1920, 1080)].map(|(w, h)| {
        let pixels = (0..w * h * 3)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        RgbImage::new(w, h, pixels).expect("frame")
    });
    let whole = Tiling::whole();
    let quarters = Tiling {
        rows: 2,
        cols: 2,
        ..Tiling::whole()
    };
    println!("frame      tiling  u8 ms/frame  f32 ms/frame");
    for frame in &frames {
        for (name, tiling) in [("1x1", &whole), ("2x2", &quarters)] {
            let tiles = tiling.tiles(frame.width, frame.height);
            let placement = tiling.placement(frame.width, frame.height, (224, 224));
            let mut time = |resample: Resample| {
                let mut best = f64::INFINITY;
                let mut out = Vec::with_capacity(tiles.len() * 3 * 224 * 224);
                for _ in 0..5 {
                    let start = Instant::now();
                    for _ in 0..50 {
                        out.clear();
                        for tile in &tiles {
                            pre.push_tile(frame, tile, &placement, resample, &mut out)
                                .expect("preprocess");
                        }
                        std::hint::black_box(&out);
                    }
                    best = best.min(start.elapsed().as_secs_f64() * 1000.0 / 50.0);
                }
                best
            };
            let (u8_ms, f32_ms) = (time(Resample::U8), time(Resample::F32));
            println!(
                "{:>4}x{:<5} {name}     {u8_ms:>8.3}     {f32_ms:>8.3}",
                frame.width, frame.height
            );
        }
    }
}
