//! Copies among enrollment inputs.
//!
//! A calibration stands on validation images that are anomaly-free *and* unlike the references
//! in the way new frames are. A copy of a reference scores about 0 (every patch finds itself in
//! the bank) and drags the calibration's centre down and its spread up, muting real defects;
//! copies of one another shrink the spread. Exact copies are found by their decoded pixels
//! (whatever the file format or metadata), near copies (re-encoded, slightly noisy) by their
//! anomaly map.

use super::preprocess::RgbImage;
use sha2::{Digest, Sha256};

/// Largest cosine distance to the bank at which a patch counts as found in it. A validation
/// image whose every patch is this close is a near copy of the references. With DINOv2
/// ViT-S/14 on the textile set, distinct nominal frames score 0.06 to 0.1 (map maximum), a
/// reference re-encoded as JPEG at quality 50 or with Gaussian noise of 5 grey levels at most
/// 0.008, and shifted by 2 pixels 0.035 (not flagged): figures of a one-off check with
/// `logsad enroll` on such copies, which no test repeats (the tiny model's distances differ).
pub const NEAR_COPY_DISTANCE: f64 = 0.01;

/// SHA-256 of an image's width, height and RGB pixels: equal exactly for images with the same
/// decoded content.
pub type PixelDigest = [u8; 32];

/// The [`PixelDigest`] of `image`.
pub fn pixel_digest(image: &RgbImage) -> PixelDigest {
    let mut hash = Sha256::new();
    hash.update(image.width.to_le_bytes());
    hash.update(image.height.to_le_bytes());
    hash.update(&image.pixels);
    hash.finalize().into()
}

/// Whether every cell of an anomaly map (cosine distances to the bank) is below
/// [`NEAR_COPY_DISTANCE`]; false for an empty map.
pub fn is_near_copy(map: &[f32]) -> bool {
    !map.is_empty() && map.iter().all(|&d| (d as f64) < NEAR_COPY_DISTANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_pixels_and_size_only() {
        let a = RgbImage::new(2, 3, (0..18).collect()).unwrap();
        let same = RgbImage::new(2, 3, (0..18).collect()).unwrap();
        assert_eq!(pixel_digest(&a), pixel_digest(&same));
        // The same bytes as a 3x2 image, and one byte changed, differ.
        let transposed = RgbImage::new(3, 2, (0..18).collect()).unwrap();
        assert_ne!(pixel_digest(&a), pixel_digest(&transposed));
        let mut pixels: Vec<u8> = (0..18).collect();
        pixels[17] += 1;
        let changed = RgbImage::new(2, 3, pixels).unwrap();
        assert_ne!(pixel_digest(&a), pixel_digest(&changed));
        // SHA-256 of width 1, height 1 (u32 little-endian) and pixel (0, 0, 0): 11 zero bytes
        // but byte 0 and byte 4 equal to 1.
        let mut message = vec![0u8; 11];
        message[0] = 1;
        message[4] = 1;
        let black = RgbImage::new(1, 1, vec![0, 0, 0]).unwrap();
        assert_eq!(
            pixel_digest(&black),
            <[u8; 32]>::from(Sha256::digest(&message))
        );
    }

    #[test]
    fn near_copy_needs_every_cell_close() {
        assert!(is_near_copy(&[0.0, 0.004, 0.0099]));
        assert!(!is_near_copy(&[0.0, 0.004, 0.0101]));
        assert!(!is_near_copy(&[0.0, f32::NAN]));
        assert!(!is_near_copy(&[]));
    }
}
