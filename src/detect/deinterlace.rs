//! Deinterlacing of frames before analysis.
//!
//! An interlaced frame interleaves two fields captured at different instants: the top field
//! (lines 0, 2, 4, ...) and the bottom field (lines 1, 3, 5, ...). Where something moved between
//! the two instants the lines alternate between two images ("combing"), which the patch detector
//! would see as a change of texture. "Bob" deinterlacing keeps one field and rebuilds the other
//! field's lines from it, giving a progressive frame of one instant at half the vertical detail.

/// A field of an interlaced frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The even lines (0, 2, 4, ...).
    Top,
    /// The odd lines (1, 3, 5, ...).
    Bottom,
}

impl Field {
    /// Index of the field's first line.
    fn first_line(self) -> usize {
        match self {
            Field::Top => 0,
            Field::Bottom => 1,
        }
    }
}

/// Bob-deinterlaces a frame in place: the lines of `keep` stay as they are, and every line of the
/// other field becomes the mean of the kept lines just above and below it, per byte, rounded half
/// up; a line with a kept line on one side only (the first or last line of the frame) copies it.
///
/// `pixels` holds `height` rows of `row_bytes` bytes each (no padding between rows), one byte
/// per sample (e.g. packed RGB: `row_bytes = 3 * width`). A one-line frame has no bottom-field
/// line to keep and is left as it is.
///
/// Errors: `pixels.len()` is not `row_bytes * height`.
pub fn bob(pixels: &mut [u8], row_bytes: usize, height: usize, keep: Field) -> Result<(), String> {
    if row_bytes.checked_mul(height) != Some(pixels.len()) {
        return Err(format!(
            "{} bytes are not {height} rows of {row_bytes} bytes",
            pixels.len()
        ));
    }
    if height < 2 || row_bytes == 0 {
        return Ok(());
    }
    let kept = keep.first_line();
    let mut line = 1 - kept;
    while line < height {
        let start = line * row_bytes;
        let above = line.checked_sub(1).map(|l| l * row_bytes);
        let below = (line + 1 < height).then_some((line + 1) * row_bytes);
        match (above, below) {
            (Some(a), Some(b)) => {
                for i in 0..row_bytes {
                    let mean = (pixels[a + i] as u16 + pixels[b + i] as u16).div_ceil(2);
                    pixels[start + i] = mean as u8;
                }
            }
            (Some(only), None) | (None, Some(only)) => {
                pixels.copy_within(only..only + row_bytes, start);
            }
            // Only a one-line frame has no neighbours, and it returned above.
            (None, None) => {}
        }
        line += 2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five rows of two bytes each, the fields clearly apart (top: tens, bottom: 200s).
    fn frame() -> Vec<u8> {
        vec![
            10, 20, // 0 top
            200, 201, // 1 bottom
            30, 41, // 2 top
            202, 203, // 3 bottom
            50, 60, // 4 top
        ]
    }

    #[test]
    fn keeping_the_top_field_interpolates_the_bottom_lines() {
        let mut p = frame();
        bob(&mut p, 2, 5, Field::Top).unwrap();
        #[rustfmt::skip]
        let expected = vec![
            10, 20,
            20, 31, // (10+30+1)/2 = 20, (20+41+1)/2 = 31 (30.5 rounded up)
            30, 41,
            40, 51, // (30+50+1)/2 = 40, (41+60+1)/2 = 51 (50.5 rounded up)
            50, 60,
        ];
        assert_eq!(p, expected);
    }

    #[test]
    fn keeping_the_bottom_field_copies_the_edge_lines() {
        let mut p = frame();
        bob(&mut p, 2, 5, Field::Bottom).unwrap();
        #[rustfmt::skip]
        let expected = vec![
            200, 201, // first line: only line 1 below it
            200, 201,
            201, 202, // (200+202+1)/2 = 201, (201+203+1)/2 = 202
            202, 203,
            202, 203, // last line: only line 3 above it
        ];
        assert_eq!(p, expected);
    }

    #[test]
    fn even_height_copies_the_last_line() {
        // Four rows of one byte, top field kept: line 3 has only line 2 above it.
        let mut p = vec![0, 255, 100, 7];
        bob(&mut p, 1, 4, Field::Top).unwrap();
        assert_eq!(p, vec![0, 50, 100, 100]);
    }

    #[test]
    fn one_line_frames_are_left_alone() {
        for keep in [Field::Top, Field::Bottom] {
            let mut p = vec![1, 2, 3];
            bob(&mut p, 3, 1, keep).unwrap();
            assert_eq!(p, vec![1, 2, 3]);
        }
    }

    #[test]
    fn wrong_size_is_an_error() {
        let mut p = vec![0u8; 7];
        let err = bob(&mut p, 2, 4, Field::Top).unwrap_err();
        assert!(
            err.contains("7 bytes") && err.contains("4 rows of 2 bytes"),
            "{err}"
        );
        assert_eq!(p, vec![0u8; 7], "nothing is written on error");
    }
}
