//! Connected regions of an anomaly map above a threshold, to report where anomalies are (boxes
//! for region-of-interest metadata and overlays) rather than only a per-frame score.

/// One 8-connected region of cells above the threshold, in map cells.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// Bounding box: left column, top row, width and height in cells.
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Largest and mean map value inside the region.
    pub max: f32,
    pub mean: f32,
    /// Number of cells in the region.
    pub area: u32,
}

/// Finds 8-connected regions of cells with value strictly greater than `threshold` (NaN cells are
/// never part of a region), keeps those with at least `min_area` cells, and returns them sorted by
/// `max` descending (ties keep raster order of each region's first cell).
///
/// # Panics
/// If `map.len() != width * height`.
pub fn regions_above(
    map: &[f32],
    width: usize,
    height: usize,
    threshold: f32,
    min_area: usize,
) -> Vec<Region> {
    assert_eq!(
        map.len(),
        width * height,
        "map size does not match width x height"
    );
    let mut visited = vec![false; map.len()];
    let mut stack = Vec::new();
    let mut regions = Vec::new();

    for start in 0..map.len() {
        let above = map[start] > threshold; // false for NaN
        if visited[start] || !above {
            continue;
        }
        visited[start] = true;
        stack.push(start);
        let (mut x0, mut y0) = (usize::MAX, usize::MAX);
        let (mut x1, mut y1) = (0usize, 0usize);
        let mut max = f32::NEG_INFINITY;
        let mut sum = 0.0f64;
        let mut area = 0usize;

        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            let v = map[i];
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
            max = max.max(v);
            sum += v as f64;
            area += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = ny * width + nx;
                    if !visited[j] && map[j] > threshold {
                        visited[j] = true;
                        stack.push(j);
                    }
                }
            }
        }

        if area >= min_area {
            regions.push(Region {
                x: x0 as u32,
                y: y0 as u32,
                width: (x1 - x0 + 1) as u32,
                height: (y1 - y0 + 1) as u32,
                max,
                mean: (sum / area as f64) as f32,
                area: area as u32,
            });
        }
    }
    // Stable sort: equal maxima stay in raster order.
    regions.sort_by(|a, b| b.max.total_cmp(&a.max));
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a map from rows of digits (value = digit / 10).
    fn map(rows: &[&str]) -> (Vec<f32>, usize, usize) {
        let w = rows[0].len();
        let v = rows
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), w);
                r.bytes().map(|b| (b - b'0') as f32 / 10.0)
            })
            .collect();
        (v, w, rows.len())
    }

    #[test]
    fn diagonal_cells_connect() {
        let (m, w, h) = map(&["9000", "0800", "0070", "0000"]);
        let r = regions_above(&m, w, h, 0.5, 1);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0],
            Region {
                x: 0,
                y: 0,
                width: 3,
                height: 3,
                max: 0.9,
                mean: 0.8,
                area: 3
            }
        );
        // Anti-diagonal too.
        let (m, w, h) = map(&["0009", "0090", "0900"]);
        let r = regions_above(&m, w, h, 0.5, 1);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].x, r[0].y, r[0].width, r[0].height, r[0].area),
            (1, 0, 3, 3, 3)
        );
    }

    #[test]
    fn two_blobs_sorted_by_max() {
        let (m, w, h) = map(&["660000", "660000", "000000", "000079", "000077"]);
        let r = regions_above(&m, w, h, 0.5, 1);
        assert_eq!(r.len(), 2);
        // The lower-right blob has the larger maximum, so it comes first.
        assert_eq!(
            (r[0].x, r[0].y, r[0].width, r[0].height, r[0].area),
            (4, 3, 2, 2, 4)
        );
        assert_eq!(r[0].max, 0.9);
        assert!((r[0].mean - 0.75).abs() < 1e-6);
        assert_eq!(
            (r[1].x, r[1].y, r[1].width, r[1].height, r[1].area),
            (0, 0, 2, 2, 4)
        );
        assert_eq!(r[1].max, 0.6);
        assert!((r[1].mean - 0.6).abs() < 1e-6);
    }

    #[test]
    fn threshold_is_strict_and_min_area_filters() {
        let (m, w, h) = map(&["500", "060", "007"]);
        // 0.5 is not above 0.5; 0.6 and 0.7 connect diagonally.
        let r = regions_above(&m, w, h, 0.5, 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].area, 2);
        assert_eq!((r[0].x, r[0].y), (1, 1));
        assert!(regions_above(&m, w, h, 0.5, 3).is_empty());
        assert_eq!(regions_above(&m, w, h, 0.5, 2).len(), 1);

        let (m, w, h) = map(&["90009", "00000", "00090"]);
        let r = regions_above(&m, w, h, 0.1, 1);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| r.area == 1 && r.max == 0.9));
        // Equal maxima keep raster order.
        assert_eq!(
            r.iter().map(|r| (r.x, r.y)).collect::<Vec<_>>(),
            vec![(0, 0), (4, 0), (3, 2)]
        );
    }

    #[test]
    fn none_and_whole_map() {
        let (m, w, h) = map(&["123", "456"]);
        assert!(regions_above(&m, w, h, 0.6, 1).is_empty());
        let r = regions_above(&m, w, h, 0.0, 1);
        assert_eq!(
            r,
            vec![Region {
                x: 0,
                y: 0,
                width: 3,
                height: 2,
                max: 0.6,
                mean: 0.35,
                area: 6
            }]
        );
        assert!(regions_above(&[], 0, 0, 0.0, 1).is_empty());
    }

    #[test]
    fn nan_cells_are_ignored_and_ring_is_one_region() {
        let nan = f32::NAN;
        let m = vec![
            1.0, 1.0, 1.0, //
            1.0, nan, 1.0, //
            1.0, 1.0, 1.0,
        ];
        let r = regions_above(&m, 3, 3, 0.5, 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].area, 8);
        assert_eq!(r[0].mean, 1.0);
        assert_eq!((r[0].width, r[0].height), (3, 3));
    }

    #[test]
    fn single_row_and_column() {
        let r = regions_above(&[1.0, 0.0, 1.0, 1.0], 4, 1, 0.5, 1);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].x, r[0].width), (0, 1));
        assert_eq!((r[1].x, r[1].width), (2, 2));
        let r = regions_above(&[1.0, 1.0, 0.0, 1.0], 1, 4, 0.5, 1);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].y, r[0].height), (0, 2));
        assert_eq!((r[1].y, r[1].height), (3, 1));
    }

    #[test]
    #[should_panic]
    fn size_mismatch_panics() {
        regions_above(&[0.0; 5], 2, 2, 0.0, 1);
    }
}
