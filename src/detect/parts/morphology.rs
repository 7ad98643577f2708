//! Binary morphology and connected components on a cell grid (row-major `width * height`
//! masks). The structuring element of radius `r` is the `(2r + 1) x (2r + 1)` square, as the
//! reference's `3x3` dilation (r = 1) and `23x23` erosion (r = 11).

use super::{Connectivity, PartError};

/// Dilation by the `(2 radius + 1)` square: a cell is set when any cell within `radius` (in both
/// x and y) is set. Cells outside the grid count as unset. Errors when `mask` does not hold
/// `width * height` cells.
pub fn dilate(
    mask: &[bool],
    width: usize,
    height: usize,
    radius: usize,
) -> Result<Vec<bool>, PartError> {
    check_mask(mask, width, height)?;
    let rows = window_rows(mask, width, radius, true);
    Ok(window_columns(&rows, width, height, radius, true))
}

/// Erosion by the `(2 radius + 1)` square: a cell stays set when every cell within `radius` is
/// set. Cells outside the grid count as set (OpenCV's default border, which the reference
/// uses), so a shape touching the border is not eaten from it; a closing (dilation then erosion)
/// whose dilation reached the border keeps what it added there.
/// Errors when `mask` does not hold `width * height` cells.
pub fn erode(
    mask: &[bool],
    width: usize,
    height: usize,
    radius: usize,
) -> Result<Vec<bool>, PartError> {
    check_mask(mask, width, height)?;
    let rows = window_rows(mask, width, radius, false);
    Ok(window_columns(&rows, width, height, radius, false))
}

/// The connected components of the set cells with at least `min_cells` cells each, as lists of
/// cell indices (ascending), ordered by their first cell in row-major order. Errors when `mask`
/// does not hold `width * height` cells.
pub fn components(
    mask: &[bool],
    width: usize,
    height: usize,
    connectivity: Connectivity,
    min_cells: usize,
) -> Result<Vec<Vec<u32>>, PartError> {
    check_mask(mask, width, height)?;
    let offsets: &[(isize, isize)] = match connectivity {
        Connectivity::Four => &[(-1, 0), (1, 0), (0, -1), (0, 1)],
        Connectivity::Eight => &[
            (-1, -1),
            (0, -1),
            (1, -1),
            (-1, 0),
            (1, 0),
            (-1, 1),
            (0, 1),
            (1, 1),
        ],
    };
    let mut seen = vec![false; mask.len()];
    let mut found = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut cells = Vec::new();
        while let Some(cell) = stack.pop() {
            cells.push(cell as u32);
            let (x, y) = ((cell % width) as isize, (cell / width) as isize);
            for (dx, dy) in offsets {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                    continue;
                }
                let next = ny as usize * width + nx as usize;
                if mask[next] && !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        if cells.len() >= min_cells {
            cells.sort_unstable();
            found.push(cells);
        }
    }
    Ok(found)
}

fn check_mask(mask: &[bool], width: usize, height: usize) -> Result<(), PartError> {
    if width.checked_mul(height) != Some(mask.len()) {
        return Err(PartError::MaskSize {
            cells: mask.len(),
            width,
            height,
        });
    }
    Ok(())
}

/// Along each row: `any` (dilation, outside unset) or `all` (erosion, outside set) of the
/// window of `radius` cells either side, from prefix counts of the decisive cells.
fn window_rows(mask: &[bool], width: usize, radius: usize, any: bool) -> Vec<bool> {
    let mut out = Vec::with_capacity(mask.len());
    let mut prefix = vec![0usize; width + 1];
    for row in mask.chunks_exact(width.max(1)) {
        for (x, &v) in row.iter().enumerate() {
            prefix[x + 1] = prefix[x] + usize::from(v == any);
        }
        for x in 0..row.len() {
            let count = prefix[(x + radius + 1).min(width)] - prefix[x.saturating_sub(radius)];
            out.push(if any { count > 0 } else { count == 0 });
        }
    }
    out
}

/// As [`window_rows`], along each column.
fn window_columns(
    mask: &[bool],
    width: usize,
    height: usize,
    radius: usize,
    any: bool,
) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    let mut prefix = vec![0usize; height + 1];
    for x in 0..width {
        for y in 0..height {
            prefix[y + 1] = prefix[y] + usize::from(mask[y * width + x] == any);
        }
        for y in 0..height {
            let count = prefix[(y + radius + 1).min(height)] - prefix[y.saturating_sub(radius)];
            out[y * width + x] = if any { count > 0 } else { count == 0 };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask from rows of `#` (set) and `.` (unset).
    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let cells = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (cells, rows[0].len(), rows.len())
    }

    fn draw(cells: &[bool], width: usize) -> Vec<String> {
        cells
            .chunks(width)
            .map(|r| r.iter().map(|&c| if c { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn four_and_eight_connectivity_count_differently() {
        let (m, w, h) = mask(&[
            "#.#..", //
            ".#...", "....#", "##..#",
        ]);
        // 4-connected: the three diagonal cells are separate, plus {row 3 pair} and {right column}.
        let four = components(&m, w, h, Connectivity::Four, 1).unwrap();
        assert_eq!(
            four,
            vec![vec![0], vec![2], vec![6], vec![14, 19], vec![15, 16]]
        );
        // 8-connected: the diagonal cells join into one.
        let eight = components(&m, w, h, Connectivity::Eight, 1).unwrap();
        assert_eq!(eight, vec![vec![0, 2, 6], vec![14, 19], vec![15, 16]]);
    }

    #[test]
    fn small_components_are_dropped() {
        let (m, w, h) = mask(&[
            "###.#", //
            "#....", "...##", "#..##",
        ]);
        let sizes = |min| {
            components(&m, w, h, Connectivity::Four, min)
                .unwrap()
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), vec![4, 1, 4, 1]);
        assert_eq!(sizes(2), vec![4, 4]);
        assert_eq!(sizes(5), Vec::<usize>::new());
    }

    #[test]
    fn dilation_and_erosion_by_hand() {
        let (m, w, h) = mask(&[
            ".....", //
            ".....", "..#..", ".....",
        ]);
        assert_eq!(
            draw(&dilate(&m, w, h, 1).unwrap(), w),
            vec![".....", ".###.", ".###.", ".###."]
        );
        let (m, w, h) = mask(&[
            "####.", //
            "####.", "####.", "###..",
        ]);
        // Outside counts as set: the top and left edges do not erode.
        assert_eq!(
            draw(&erode(&m, w, h, 1).unwrap(), w),
            vec!["###..", "###..", "##...", "##..."]
        );
        assert_eq!(dilate(&m, w, h, 0).unwrap(), m);
        assert_eq!(erode(&m, w, h, 0).unwrap(), m);
    }

    #[test]
    fn closing_joins_components_one_cell_apart() {
        let (m, w, h) = mask(&[
            ".........", //
            ".........",
            "..##.##..",
            "..##.##..",
            ".........",
            ".........",
        ]);
        assert_eq!(
            components(&m, w, h, Connectivity::Eight, 1).unwrap().len(),
            2
        );
        let closed = erode(&dilate(&m, w, h, 1).unwrap(), w, h, 1).unwrap();
        let gap_filled = "..#####..";
        assert_eq!(
            draw(&closed, w),
            vec![
                ".........",
                ".........",
                gap_filled,
                gap_filled,
                ".........",
                "........."
            ]
        );
        assert_eq!(
            components(&closed, w, h, Connectivity::Eight, 1)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn wrong_mask_size_is_an_error() {
        let err = components(&[true; 5], 2, 2, Connectivity::Four, 1).unwrap_err();
        assert!(matches!(err, PartError::MaskSize { cells: 5, .. }));
        assert!(dilate(&[true; 3], 2, 2, 1).is_err());
        assert!(erode(&[true; 3], 2, 2, 1).is_err());
    }
}
