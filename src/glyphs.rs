//! The 8x8 bitmap font (`font8x8`) that every picture of the project writes text with: the
//! overlay's labels, the ROC plots and the parts picture. Each caller draws the lit font pixels
//! its own way (a clipped square per pixel on a video frame, one pixel on a PNG).

/// Width and height of a character, in font pixels.
pub const GLYPH_SIZE: i64 = 8;

/// The lit font pixels of `text` as `(x, y)` offsets in font pixels from the top-left corner of
/// its first character, characters side by side; a character outside ASCII is drawn as `?`.
pub fn lit_pixels(text: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    text.chars().enumerate().flat_map(|(i, ch)| {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        (0..GLYPH_SIZE).flat_map(move |row| {
            (0..GLYPH_SIZE)
                .filter(move |&col| glyph[row as usize] & (1 << col) != 0)
                .map(move |col| (i as i64 * GLYPH_SIZE + col, row))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lit_pixels_follow_the_font_and_advance_by_a_glyph() {
        // '|' in font8x8 is a broken bar: 0x18 (columns 3 and 4) on rows 0-2 and 4-6.
        let bar: Vec<(i64, i64)> = lit_pixels("|").collect();
        let want: Vec<(i64, i64)> = [0, 1, 2, 4, 5, 6]
            .into_iter()
            .flat_map(|y| [(3, y), (4, y)])
            .collect();
        assert_eq!(bar, want);
        // The second character is 8 pixels to the right; a space lights nothing.
        let two: Vec<(i64, i64)> = lit_pixels(" |").collect();
        assert_eq!(
            two,
            want.iter().map(|&(x, y)| (x + 8, y)).collect::<Vec<_>>()
        );
        // Outside ASCII: the question mark.
        assert_eq!(
            lit_pixels("é").collect::<Vec<_>>(),
            lit_pixels("?").collect::<Vec<_>>()
        );
    }
}
