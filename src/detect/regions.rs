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

/// How the regions reported for a frame are derived from its anomaly map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionOptions {
    /// Fraction of the way from the background level (the median of the tile holding the
    /// region's peak) to the peak below which cells are cut from the region, 0..1. `0` keeps every cell above the
    /// threshold (the boxes of earlier versions); `0.5` keeps the cells above half the peak's
    /// height over the background, so a small defect's box frames the defect rather than the
    /// tile around it.
    pub peak_fraction: f32,
    /// Whose peak `peak_fraction` is measured against.
    pub peak_scope: PeakScope,
    /// Merge regions whose boxes overlap into one (repeated until no two overlap).
    pub merge_overlapping: bool,
    /// Smallest region kept, in map cells (after trimming).
    pub min_area: usize,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            peak_fraction: DEFAULT_PEAK_FRACTION,
            peak_scope: PeakScope::Frame,
            merge_overlapping: true,
            min_area: 1,
        }
    }
}

/// The peak that [`RegionOptions::peak_fraction`] refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeakScope {
    /// Each seed region's own peak: every defect keeps a box, however weak next to another.
    Region,
    /// The frame's highest cell: only responses comparable to the strongest remain.
    Frame,
}

impl std::str::FromStr for PeakScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "region" => Ok(PeakScope::Region),
            "frame" => Ok(PeakScope::Frame),
            other => Err(format!("unknown peak scope {other:?} (region or frame)")),
        }
    }
}

impl std::fmt::Display for PeakScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeakScope::Region => "region",
            PeakScope::Frame => "frame",
        })
    }
}

/// Default [`RegionOptions::peak_fraction`], chosen on a tuning set of synthetic defects (see
/// the README's region measurements), as was the default scope, [`PeakScope::Frame`].
pub const DEFAULT_PEAK_FRACTION: f32 = 0.5;

impl RegionOptions {
    /// The regions of earlier versions: every 8-connected group of cells above the threshold.
    pub fn above_threshold(min_area: usize) -> Self {
        RegionOptions {
            peak_fraction: 0.0,
            peak_scope: PeakScope::Region,
            merge_overlapping: false,
            min_area,
        }
    }
}

/// The regions where a map shows anomalies, in map cells, sorted by `max` descending.
///
/// The map is stitched from `blocks` = (rows, cols) equal tiles ((1, 1) for a whole-frame map):
/// a vision transformer's attention raises the level of a whole tile around a strong defect, so
/// each tile has its own background level.
///
/// 1. Seeds: the 8-connected groups of cells strictly above `threshold` (any size).
/// 2. Each seed is cut down to its cells above `max(threshold, b + f * (peak - b))`, where `b` is
///    the median of the finite cells of the tile that holds the seed's peak (the background
///    level), `peak` the seed's largest value (or the frame's, with [`PeakScope::Frame`]) and
///    `f` = `options.peak_fraction`; what remains may split into several regions. With `f = 0`
///    nothing is cut.
/// 3. Regions smaller than `options.min_area` cells are dropped; with `merge_overlapping`,
///    regions whose boxes overlap are merged (box union, largest max, area-weighted mean) until
///    no two boxes overlap.
///
/// # Panics
/// If `map.len() != width * height`.
pub fn anomaly_regions(
    map: &[f32],
    width: usize,
    height: usize,
    blocks: (usize, usize),
    threshold: f32,
    options: &RegionOptions,
) -> Vec<Region> {
    let mut regions = if options.peak_fraction > 0.0 {
        let fraction = options.peak_fraction.min(1.0);
        let backgrounds = block_medians(map, width, height, blocks);
        let block_of = |cell: usize| {
            let (rows, cols) = (
                blocks.0.clamp(1, height.max(1)),
                blocks.1.clamp(1, width.max(1)),
            );
            let (x, y) = (cell % width, cell / width);
            (y * rows / height) * cols + x * cols / width
        };
        let seeds = label_above(map, width, height, threshold);
        // Per seed: its peak value and the background of the tile holding the peak.
        let mut peaks = vec![(f32::NEG_INFINITY, 0usize); seeds.count];
        for (cell, (&label, &v)) in seeds.labels.iter().zip(map).enumerate() {
            if let Some(l) = label {
                if v > peaks[l].0 {
                    peaks[l] = (v, cell);
                }
            }
        }
        let frame_peak = peaks.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
        let levels: Vec<f32> = peaks
            .iter()
            .map(|&(peak, cell)| {
                let peak = match options.peak_scope {
                    PeakScope::Region => peak,
                    PeakScope::Frame => frame_peak,
                };
                let background = backgrounds[block_of(cell)];
                threshold.max(background + fraction * (peak - background))
            })
            .collect();
        // Cells outside every seed, or below their seed's level, can never join a region.
        let trimmed: Vec<f32> = seeds
            .labels
            .iter()
            .zip(map)
            .map(|(label, &v)| match label {
                Some(l) if v > levels[*l] => v,
                _ => f32::NAN,
            })
            .collect();
        regions_above(&trimmed, width, height, f32::NEG_INFINITY, options.min_area)
    } else {
        regions_above(map, width, height, threshold, options.min_area)
    };
    if options.merge_overlapping {
        regions = merge_overlapping(regions);
    }
    regions
}

/// The 8-connected components of cells above a threshold.
struct Labels {
    /// Per cell, the index of its component.
    labels: Vec<Option<usize>>,
    count: usize,
}

fn label_above(map: &[f32], width: usize, height: usize, threshold: f32) -> Labels {
    assert_eq!(
        map.len(),
        width * height,
        "map size does not match width x height"
    );
    let mut labels = vec![None; map.len()];
    let mut count = 0;
    let mut stack = Vec::new();
    for start in 0..map.len() {
        let above = map[start] > threshold; // false for NaN
        if labels[start].is_some() || !above {
            continue;
        }
        labels[start] = Some(count);
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = ny * width + nx;
                    if labels[j].is_none() && map[j] > threshold {
                        labels[j] = Some(count);
                        stack.push(j);
                    }
                }
            }
        }
        count += 1;
    }
    Labels { labels, count }
}

/// The median of the finite cells of each of `blocks` = (rows, cols) equal blocks of the map
/// (block `r * cols + c`); the grid is capped at the map's size.
fn block_medians(map: &[f32], width: usize, height: usize, blocks: (usize, usize)) -> Vec<f32> {
    let (rows, cols) = (
        blocks.0.clamp(1, height.max(1)),
        blocks.1.clamp(1, width.max(1)),
    );
    let mut cells: Vec<Vec<f32>> = vec![Vec::new(); rows * cols];
    for (i, &v) in map.iter().enumerate() {
        let (x, y) = (i % width, i / width);
        cells[(y * rows / height) * cols + x * cols / width].push(v);
    }
    cells.iter().map(|c| median_finite(c)).collect()
}

/// The median of the finite values (the mean of the middle two for an even count); 0 when none.
fn median_finite(values: &[f32]) -> f32 {
    let mut finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return 0.0;
    }
    let mid = finite.len() / 2;
    let (_, &mut upper, _) = finite.select_nth_unstable_by(mid, f32::total_cmp);
    if finite.len() % 2 == 1 {
        upper
    } else {
        let lower = finite[..mid]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        (lower + upper) / 2.0
    }
}

/// Whether two boxes share at least one cell.
fn boxes_overlap(a: &Region, b: &Region) -> bool {
    a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
}

/// Merges regions whose boxes overlap until no two do; sorted by `max` descending.
fn merge_overlapping(mut regions: Vec<Region>) -> Vec<Region> {
    let mut merged_any = true;
    while merged_any {
        merged_any = false;
        let mut out: Vec<Region> = Vec::with_capacity(regions.len());
        for region in regions {
            match out.iter_mut().find(|o| boxes_overlap(o, &region)) {
                Some(o) => {
                    let (x0, y0) = (o.x.min(region.x), o.y.min(region.y));
                    let x1 = (o.x + o.width).max(region.x + region.width);
                    let y1 = (o.y + o.height).max(region.y + region.height);
                    let area = o.area + region.area;
                    o.mean =
                        (o.mean * o.area as f32 + region.mean * region.area as f32) / area as f32;
                    *o = Region {
                        x: x0,
                        y: y0,
                        width: x1 - x0,
                        height: y1 - y0,
                        max: o.max.max(region.max),
                        mean: o.mean,
                        area,
                    };
                    merged_any = true;
                }
                None => out.push(region),
            }
        }
        regions = out;
    }
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
    fn peak_fraction_cuts_the_plateau_around_a_small_defect() {
        // A tile-sized plateau (0.3) around a 2-cell defect (0.9) on a 0.1 background.
        let (m, w, h) = map(&[
            "11111111", //
            "13333331", //
            "13333331", //
            "13399331", //
            "13333331", //
            "13333331", //
            "11111111", //
        ]);
        // Earlier boxes: the whole plateau.
        let before = anomaly_regions(&m, w, h, (1, 1), 0.2, &RegionOptions::above_threshold(1));
        assert_eq!(before, regions_above(&m, w, h, 0.2, 1));
        assert_eq!(
            (before[0].x, before[0].y, before[0].width, before[0].height),
            (1, 1, 6, 5)
        );
        // Background 0.1 (the median), peak 0.9: cut at 0.1 + 0.5 * 0.8 = 0.5.
        let after = anomaly_regions(&m, w, h, (1, 1), 0.2, &RegionOptions::default());
        assert_eq!(
            after,
            vec![Region {
                x: 3,
                y: 3,
                width: 2,
                height: 1,
                max: 0.9,
                mean: 0.9,
                area: 2
            }]
        );
    }

    #[test]
    fn the_threshold_still_bounds_a_faint_region() {
        // Peak 0.4 on a 0.1 background: 0.1 + 0.5 * 0.3 = 0.25 is below the threshold 0.3,
        // so the cut is the threshold itself.
        let (m, w, h) = map(&["1111", "1341", "1441", "1111"]);
        let r = anomaly_regions(&m, w, h, (1, 1), 0.3, &RegionOptions::default());
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].x, r[0].y, r[0].width, r[0].height, r[0].area),
            (1, 1, 2, 2, 3)
        );
    }

    #[test]
    fn two_peaks_on_one_seed_stay_two_regions() {
        // One seed above 0.2; cut at 0.1 + 0.5 * 0.8 = 0.5 leaves two separate peaks.
        let (m, w, h) = map(&["1111111", "1933381", "1111111", "1111111"]);
        let r = anomaly_regions(&m, w, h, (1, 1), 0.2, &RegionOptions::default());
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].x, r[0].max), (1, 0.9));
        assert_eq!((r[1].x, r[1].max), (5, 0.8));
    }

    #[test]
    fn frame_scope_drops_weak_regions() {
        // Peaks 0.9 and 0.4 on a 0.1 background, threshold 0.2. Per region, the weak one is cut
        // at 0.1 + 0.5 * 0.3 = 0.25 and stays; against the frame's peak (cut at 0.5) it goes.
        let (m, w, h) = map(&["1111111", "1911141", "1111111"]);
        let options = RegionOptions {
            peak_scope: PeakScope::Region,
            ..RegionOptions::default()
        };
        let per_region = anomaly_regions(&m, w, h, (1, 1), 0.2, &options);
        assert_eq!(per_region.len(), 2);
        let r = anomaly_regions(&m, w, h, (1, 1), 0.2, &RegionOptions::default());
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].x, r[0].y, r[0].max), (1, 1, 0.9));
        assert_eq!("frame".parse::<PeakScope>(), Ok(PeakScope::Frame));
        assert!("global".parse::<PeakScope>().is_err());
    }

    #[test]
    fn overlapping_boxes_merge() {
        // A hook and a cell inside its box, not 8-connected to it.
        let (m, w, h) = map(&["9999", "0009", "0709"]);
        let options = RegionOptions {
            merge_overlapping: true,
            ..RegionOptions::above_threshold(1)
        };
        assert_eq!(regions_above(&m, w, h, 0.5, 1).len(), 2);
        let r = anomaly_regions(&m, w, h, (1, 1), 0.5, &options);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].x, r[0].y, r[0].width, r[0].height, r[0].area),
            (0, 0, 4, 3, 7)
        );
        assert_eq!(r[0].max, 0.9);
        assert!((r[0].mean - 6.1 / 7.0).abs() < 1e-6, "{}", r[0].mean);
        // A union can reach a region kept earlier: C is apart from A and from B, but not from
        // the union of A and B.
        let boxed = |x, y, width, height, max| Region {
            x,
            y,
            width,
            height,
            max,
            mean: max,
            area: 1,
        };
        let r = merge_overlapping(vec![
            boxed(5, 0, 2, 1, 0.9),
            boxed(0, 0, 2, 2, 0.8),
            boxed(1, 1, 5, 1, 0.7),
        ]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            (r[0].x, r[0].y, r[0].width, r[0].height, r[0].area),
            (0, 0, 7, 2, 3)
        );
    }

    #[test]
    fn each_tile_has_its_own_background() {
        // Two tiles side by side: the right one raised to 0.5 around a 0.9 defect, the left one
        // at 0.1. With the frame's median (0.3) the cut is 0.6 and keeps the raised cell 0.7
        // apart from the defect as a second region; with the right tile's median (0.5) the cut
        // is 0.7, and only the defect remains.
        let (m, w, h) = map(&["11115555", "11115955", "11115557", "11115555"]);
        let whole = anomaly_regions(&m, w, h, (1, 1), 0.2, &RegionOptions::default());
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert_eq!((whole[1].x, whole[1].y, whole[1].max), (7, 2, 0.7));
        let tiled = anomaly_regions(&m, w, h, (1, 2), 0.2, &RegionOptions::default());
        assert_eq!(tiled.len(), 1, "{tiled:?}");
        assert_eq!(
            (tiled[0].x, tiled[0].y, tiled[0].width, tiled[0].height),
            (5, 1, 1, 1)
        );
        assert_eq!(block_medians(&m, w, h, (1, 2)), vec![0.1, 0.5]);
        // More blocks than cells: one block per cell.
        assert_eq!(block_medians(&[1.0, 2.0], 2, 1, (4, 4)), vec![1.0, 2.0]);
    }

    #[test]
    fn median_of_finite_cells() {
        assert_eq!(median_finite(&[3.0, 1.0, 2.0, f32::NAN]), 2.0);
        assert_eq!(median_finite(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_finite(&[f32::NAN]), 0.0);
    }

    #[test]
    #[should_panic(expected = "map size does not match width x height")]
    fn size_mismatch_panics() {
        regions_above(&[0.0; 5], 2, 2, 0.0, 1);
    }
}
