//! Tiling geometry and map stitching for frames larger than the model input.
//!
//! Squash-resizing a large frame to the model input loses small defects; cutting it into
//! overlapping tiles, running the model on each and stitching the per-tile anomaly maps back
//! keeps them visible. Overlap hides tile-border effects: overlapping cells are averaged.

use super::preprocess::Resample;
use serde::{Deserialize, Serialize};

/// Largest accepted overlap fraction: beyond it tiles are nearly identical.
pub const MAX_OVERLAP: f32 = 0.9;
/// Largest accepted number of tile rows or columns.
pub const MAX_TILES_PER_AXIS: u32 = 64;

/// How a tile is fitted into the model input.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Stretched to the input size, aspect ratio lost (the reference).
    #[default]
    Squash,
    /// Scaled to fit with its aspect ratio kept, centred, the rest filled with the
    /// normalisation mean (0 after normalisation).
    Letterbox,
}

impl std::str::FromStr for Resize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "squash" => Ok(Resize::Squash),
            "letterbox" => Ok(Resize::Letterbox),
            other => Err(format!("unknown resize {other:?} (squash or letterbox)")),
        }
    }
}

/// Where a tile's pixels land in the model input, in whole input pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Placement {
    /// The placement of a `tile_w x tile_h` tile in a `input_w x input_h` input.
    pub fn of(
        resize: Resize,
        (tile_w, tile_h): (f64, f64),
        (input_w, input_h): (u32, u32),
    ) -> Self {
        match resize {
            Resize::Squash => Placement {
                x: 0,
                y: 0,
                width: input_w,
                height: input_h,
            },
            Resize::Letterbox => {
                let scale = (input_w as f64 / tile_w).min(input_h as f64 / tile_h);
                let fit = |len: f64, input: u32| ((len * scale).round() as u32).clamp(1, input);
                let (width, height) = (fit(tile_w, input_w), fit(tile_h, input_h));
                Placement {
                    x: (input_w - width) / 2,
                    y: (input_h - height) / 2,
                    width,
                    height,
                }
            }
        }
    }

    /// The span `(start, length)` of the placement along x and along y, as fractions of the
    /// input.
    fn windows(&self, (input_w, input_h): (u32, u32)) -> ((f64, f64), (f64, f64)) {
        let fraction = |start: u32, len: u32, input: u32| {
            (start as f64 / input as f64, len as f64 / input as f64)
        };
        (
            fraction(self.x, self.width, input_w),
            fraction(self.y, self.height, input_h),
        )
    }
}

/// How a frame is cut into tiles.
///
/// The frame is covered by `rows` x `cols` equal tiles, each sharing the fraction `overlap` of
/// its size with its neighbour; every tile is fitted into the model input as `resize` says,
/// resampled as `resample` says. Upscaling the frame
/// first and cutting it into tiles of the model's size is the same as choosing the grid: see
/// [`Tiling::for_upscale`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Tiling {
    pub rows: u32,
    pub cols: u32,
    pub overlap: f32,
    /// Absent from profiles written before letterboxing existed: squash.
    #[serde(default)]
    pub resize: Resize,
    /// Absent from profiles written before format 5, which all resampled 8-bit pixels.
    #[serde(default = "Resample::before_format_5")]
    pub resample: Resample,
}

impl Default for Tiling {
    fn default() -> Self {
        Self::whole()
    }
}

/// Which reference tiles a query tile is matched against (fixed cameras: a tile's content
/// stays at its position, so matching far tiles only costs time).
///
/// Serialised as `"all"`, `"auto"` or `{"within": R}`; profiles never hold `auto`:
/// enrollment resolves it to the `within` or `all` it chose.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Neighbourhood {
    /// Every reference tile (the reference's behaviour).
    #[default]
    All,
    /// Chosen at enrollment from the validation images (see `enroll`).
    Auto,
    /// The reference tiles at most R tile steps away (Chebyshev distance in the tile grid):
    /// 0 is the same position only.
    Within(u32),
}

impl std::str::FromStr for Neighbourhood {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Neighbourhood::All),
            "auto" => Ok(Neighbourhood::Auto),
            r => r.parse().map(Neighbourhood::Within).map_err(|_| {
                format!("unknown tile neighbourhood {r:?} (all, auto or a tile distance 0, 1, ...)")
            }),
        }
    }
}

impl Neighbourhood {
    /// Whether query tile `tile` of `tiling` is matched against bank block `block`, where
    /// blocks are pushed per reference image in tile order (`block = image * tiles + tile`).
    /// `Auto` (unresolved) allows every block.
    pub fn allows(self, tiling: &Tiling, tile: usize, block: usize) -> bool {
        match self {
            Neighbourhood::All | Neighbourhood::Auto => true,
            Neighbourhood::Within(r) => {
                let cols = tiling.cols.max(1) as usize;
                let tiles = cols * tiling.rows.max(1) as usize;
                let other = block % tiles;
                let (qr, qc) = (tile / cols, tile % cols);
                let (br, bc) = (other / cols, other % cols);
                qr.abs_diff(br).max(qc.abs_diff(bc)) <= r as usize
            }
        }
    }

    /// The distances worth trying on `tiling`: 0 up to the largest that still leaves a tile out
    /// (larger ones match every tile, the same as `All`).
    pub fn candidates(tiling: &Tiling) -> std::ops::Range<u32> {
        0..tiling.rows.max(tiling.cols).saturating_sub(1)
    }
}

/// A tile rectangle in source-frame pixel coordinates (fractional: crop and resize with
/// sub-pixel precision, or round outward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

/// Start and length of `n` equal segments with fractional `overlap` covering `[0, extent]`:
/// the first starts at 0, the last ends at `extent`, starts evenly spaced.
fn axis_segments(extent: f64, n: u32, overlap: f64) -> Vec<(f64, f64)> {
    let n = n.max(1);
    let len = extent / ((n - 1) as f64 * (1.0 - overlap) + 1.0);
    (0..n)
        .map(|i| {
            let start = if n == 1 {
                0.0
            } else if i == n - 1 {
                extent - len // exact end at the frame edge
            } else {
                i as f64 * (extent - len) / (n - 1) as f64
            };
            (start, len)
        })
        .collect()
}

/// Frame extent covered by `n` tiles with `overlap`, in tile lengths.
fn span(n: u32, overlap: f32) -> f64 {
    (n.max(1) - 1) as f64 * (1.0 - overlap as f64) + 1.0
}

impl Tiling {
    /// One tile covering the whole frame: the faithful squash-resize of the full frame.
    pub fn whole() -> Self {
        Tiling {
            rows: 1,
            cols: 1,
            overlap: 0.0,
            resize: Resize::Squash,
            resample: Resample::F32,
        }
    }

    /// The grid that cuts a `frame_w x frame_h` frame, upscaled by `upscale`, into tiles of
    /// about the model input's size (`input_w x input_h`) with the given overlap.
    pub fn for_upscale(
        upscale: f32,
        overlap: f32,
        (frame_w, frame_h): (u32, u32),
        (input_w, input_h): (usize, usize),
    ) -> Self {
        // n tiles of length L with overlap o span L * ((n - 1)(1 - o) + 1).
        let count = |frame: u32, input: usize| {
            let span = frame as f64 * upscale as f64 / input as f64;
            let n = ((span - 1.0) / (1.0 - overlap as f64) + 1.0).round();
            n.clamp(1.0, MAX_TILES_PER_AXIS as f64) as u32
        };
        Tiling {
            rows: count(frame_h, input_h),
            cols: count(frame_w, input_w),
            overlap,
            ..Tiling::whole()
        }
    }

    /// Checks `1 <= rows, cols <= 64`, `0 <= overlap <= 0.9`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("rows", self.rows), ("cols", self.cols)] {
            if !(1..=MAX_TILES_PER_AXIS).contains(&v) {
                return Err(format!(
                    "tiling {name} must be in [1, {MAX_TILES_PER_AXIS}], got {v}"
                ));
            }
        }
        if !(self.overlap.is_finite() && (0.0..=MAX_OVERLAP).contains(&self.overlap)) {
            return Err(format!(
                "tiling overlap must be in [0, {MAX_OVERLAP}], got {}",
                self.overlap
            ));
        }
        Ok(())
    }

    /// Tile rectangles in source pixels, row-major (index = row * cols + col). The first tile of
    /// each axis starts at 0 and the last ends exactly at the frame edge.
    pub fn tiles(&self, frame_w: u32, frame_h: u32) -> Vec<Tile> {
        let o = self.overlap as f64;
        let xs = axis_segments(frame_w as f64, self.cols, o);
        let ys = axis_segments(frame_h as f64, self.rows, o);
        let mut out = Vec::with_capacity(xs.len() * ys.len());
        for &(y, h) in &ys {
            for &(x, w) in &xs {
                out.push(Tile {
                    x: x as f32,
                    y: y as f32,
                    width: w as f32,
                    height: h as f32,
                });
            }
        }
        out
    }

    /// Where every tile of a `frame_w x frame_h` frame lands in a `input_w x input_h` input
    /// (all tiles have the same size).
    pub fn placement(&self, frame_w: u32, frame_h: u32, input: (u32, u32)) -> Placement {
        let o = self.overlap as f64;
        let tile_w = axis_segments(frame_w as f64, self.cols, o)[0].1;
        let tile_h = axis_segments(frame_h as f64, self.rows, o)[0].1;
        Placement::of(self.resize, (tile_w, tile_h), input)
    }

    /// Size (width, height) in cells of the stitched map when each tile yields a
    /// `tile_grid_w x tile_grid_h` map: the cell size of the tile maps is kept, so the output is
    /// `round(grid * span)` per axis, where a tile covers `1 / span` of the frame. For [`Tiling::whole`] it is the tile grid itself.
    pub fn map_size(&self, tile_grid_w: usize, tile_grid_h: usize) -> (usize, usize) {
        let (mx, my) = (span(self.cols, self.overlap), span(self.rows, self.overlap));
        (
            ((tile_grid_w as f64 * mx).round() as usize).max(1),
            ((tile_grid_h as f64 * my).round() as usize).max(1),
        )
    }
}

/// Bilinear sampling plan of one tile column (or row) for the output cells it covers.
#[derive(Clone, Debug)]
struct AxisPlan {
    /// First output cell covered.
    start: usize,
    /// Per covered cell: lower source index, upper source index, weight of the upper one.
    taps: Vec<(usize, usize, f32)>,
}

/// Plans sampling along one axis: output cell centres inside the segment, sampled at half-pixel
/// centres of the `grid` tile cells; the segment's pixels occupy `window` (start, length as
/// fractions) of the tile map.
fn plan_axis(
    seg: (f64, f64),
    window: (f64, f64),
    extent: f64,
    out: usize,
    grid: usize,
) -> AxisPlan {
    let (start, len) = seg;
    let (window_start, window_len) = window;
    let cell = extent / out as f64;
    let eps = 1e-9 * extent.max(1.0);
    let mut first = None;
    let mut taps = Vec::new();
    for o in 0..out {
        let c = (o as f64 + 0.5) * cell;
        if c < start - eps || c > start + len + eps {
            continue;
        }
        first.get_or_insert(o);
        let mut u = ((c - start) / len * window_len + window_start) * grid as f64 - 0.5;
        // Snap values that only differ from a source centre by rounding, so the whole-frame
        // tiling reproduces its input exactly.
        if (u - u.round()).abs() < 1e-6 {
            u = u.round();
        }
        let u = u.clamp(0.0, (grid - 1) as f64);
        let i0 = u.floor() as usize;
        let i1 = (i0 + 1).min(grid - 1);
        taps.push((i0, i1, (u - i0 as f64) as f32));
    }
    AxisPlan {
        start: first.unwrap_or(0),
        taps,
    }
}

#[inline]
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    if t == 0.0 {
        a // exact, and keeps a non-finite neighbour from leaking in
    } else {
        a + (b - a) * t
    }
}

/// Accumulates per-tile anomaly maps into one map covering the whole frame.
///
/// Each output cell takes the bilinear sample (at its centre) of every tile covering it, and
/// averages them. Reusable: [`Stitcher::finish`] resets the accumulators for the next frame.
#[derive(Clone, Debug)]
pub struct Stitcher {
    cols: usize,
    grid_w: usize,
    grid_h: usize,
    out_w: usize,
    out_h: usize,
    col_plans: Vec<AxisPlan>,
    row_plans: Vec<AxisPlan>,
    sum: Vec<f32>,
    count: Vec<u32>,
}

impl Stitcher {
    /// Plans stitching of `tile_grid_w x tile_grid_h` tile maps for a `frame_w x frame_h` frame
    /// whose tiles went through a model input of size `input`; the output size is
    /// [`Tiling::map_size`].
    pub fn new(
        tiling: &Tiling,
        (frame_w, frame_h): (u32, u32),
        (tile_grid_w, tile_grid_h): (usize, usize),
        input: (u32, u32),
    ) -> Result<Self, String> {
        tiling.validate()?;
        if frame_w == 0 || frame_h == 0 || tile_grid_w == 0 || tile_grid_h == 0 {
            return Err(format!(
                "stitcher needs non-empty frame and grids, got frame {frame_w}x{frame_h}, \
                 tile grid {tile_grid_w}x{tile_grid_h}"
            ));
        }
        if input.0 == 0 || input.1 == 0 {
            return Err(format!("stitcher needs a non-empty input, got {input:?}"));
        }
        let (window_x, window_y) = tiling.placement(frame_w, frame_h, input).windows(input);
        let (out_w, out_h) = tiling.map_size(tile_grid_w, tile_grid_h);
        // Plans in source pixels .
        let o = tiling.overlap as f64;
        let (fw, fh) = (frame_w as f64, frame_h as f64);
        let col_plans = axis_segments(fw, tiling.cols, o)
            .into_iter()
            .map(|seg| plan_axis(seg, window_x, fw, out_w, tile_grid_w))
            .collect();
        let row_plans = axis_segments(fh, tiling.rows, o)
            .into_iter()
            .map(|seg| plan_axis(seg, window_y, fh, out_h, tile_grid_h))
            .collect();
        Ok(Stitcher {
            cols: tiling.cols as usize,
            grid_w: tile_grid_w,
            grid_h: tile_grid_h,
            out_w,
            out_h,
            col_plans,
            row_plans,
            sum: vec![0.0; out_w * out_h],
            count: vec![0; out_w * out_h],
        })
    }

    /// Adds the row-major `tile_grid_h x tile_grid_w` map of tile `tile_index` (row-major tile
    /// order as in [`Tiling::tiles`]).
    ///
    /// # Panics
    /// If `tile_index` is out of range or `map` has the wrong length.
    pub fn add(&mut self, tile_index: usize, map: &[f32]) {
        assert!(
            tile_index < self.cols * self.row_plans.len(),
            "tile index {tile_index} out of range"
        );
        assert_eq!(
            map.len(),
            self.grid_w * self.grid_h,
            "tile map size mismatch"
        );
        let cp = &self.col_plans[tile_index % self.cols];
        let rp = &self.row_plans[tile_index / self.cols];
        for (dy, &(r0, r1, ty)) in rp.taps.iter().enumerate() {
            let row0 = &map[r0 * self.grid_w..(r0 + 1) * self.grid_w];
            let row1 = &map[r1 * self.grid_w..(r1 + 1) * self.grid_w];
            let base = (rp.start + dy) * self.out_w + cp.start;
            for (dx, &(c0, c1, tx)) in cp.taps.iter().enumerate() {
                let top = lerp(row0[c0], row0[c1], tx);
                let v = if ty == 0.0 {
                    top
                } else {
                    lerp(top, lerp(row1[c0], row1[c1], tx), ty)
                };
                self.sum[base + dx] += v;
                self.count[base + dx] += 1;
            }
        }
    }

    /// Returns the stitched map (row-major) with its width and height, and resets the
    /// accumulators. Cells no added tile covered are 0.
    pub fn finish(&mut self) -> (Vec<f32>, usize, usize) {
        let map = self
            .sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f32 })
            .collect();
        self.sum.fill(0.0);
        self.count.fill(0);
        (map, self.out_w, self.out_h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(x: f32, y: f32, width: f32, height: f32) -> Tile {
        Tile {
            x,
            y,
            width,
            height,
        }
    }

    fn grid(rows: u32, cols: u32, overlap: f32) -> Tiling {
        Tiling {
            rows,
            cols,
            overlap,
            ..Tiling::whole()
        }
    }

    fn assert_tiles_close(got: &[Tile], want: &[Tile]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            for (a, b) in [
                (g.x, w.x),
                (g.y, w.y),
                (g.width, w.width),
                (g.height, w.height),
            ] {
                assert!((a - b).abs() < 1e-3, "{g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn whole_frame() {
        let t = Tiling::whole();
        assert_eq!(t, Tiling::default());
        assert!(t.validate().is_ok());
        assert_eq!(t.tiles(640, 480), vec![tile(0.0, 0.0, 640.0, 480.0)]);
        assert_eq!(t.map_size(64, 64), (64, 64));
        assert_eq!(t.map_size(37, 5), (37, 5));
    }

    #[test]
    fn two_by_two_no_overlap() {
        let t = grid(2, 2, 0.0);
        assert_eq!(
            t.tiles(250, 250),
            vec![
                tile(0.0, 0.0, 125.0, 125.0),
                tile(125.0, 0.0, 125.0, 125.0),
                tile(0.0, 125.0, 125.0, 125.0),
                tile(125.0, 125.0, 125.0, 125.0),
            ]
        );
        assert_eq!(t.map_size(64, 64), (128, 128));
        assert_eq!(t.tiles(250, 250).len(), 4);
    }

    #[test]
    fn two_by_two_quarter_overlap() {
        let t = grid(2, 2, 0.25);
        // Tile = 250 / 1.75; second tile starts at 250 - tile; shared part = 0.25 * tile.
        let s = 250.0f32 / 1.75;
        let b = 250.0 - s;
        let tiles = t.tiles(250, 250);
        assert_tiles_close(
            &tiles,
            &[
                tile(0.0, 0.0, s, s),
                tile(b, 0.0, s, s),
                tile(0.0, b, s, s),
                tile(b, b, s, s),
            ],
        );
        assert!(((s - b) - 0.25 * s).abs() < 1e-3);
        assert!((tiles[1].x + tiles[1].width - 250.0).abs() < 1e-4);
        assert_eq!(t.map_size(64, 64), (112, 112));
    }

    #[test]
    fn non_square_frame() {
        // 3 columns with half overlap over 400 px: tile 200, starts 0/100/200.
        // 2 rows with half overlap over 200 px: tile 133.33, starts 0/66.67.
        let t = grid(2, 3, 0.5);
        let h = 200.0f32 / 1.5;
        assert_tiles_close(
            &t.tiles(400, 200),
            &[
                tile(0.0, 0.0, 200.0, h),
                tile(100.0, 0.0, 200.0, h),
                tile(200.0, 0.0, 200.0, h),
                tile(0.0, 200.0 - h, 200.0, h),
                tile(100.0, 200.0 - h, 200.0, h),
                tile(200.0, 200.0 - h, 200.0, h),
            ],
        );
        assert_eq!(t.map_size(10, 10), (20, 15));
        // 1 row x 2 columns without overlap on 300x100.
        assert_eq!(
            grid(1, 2, 0.0).tiles(300, 100),
            vec![tile(0.0, 0.0, 150.0, 100.0), tile(150.0, 0.0, 150.0, 100.0)]
        );
    }

    #[test]
    fn upscale_picks_the_grid_of_model_sized_tiles() {
        // 250 px upscaled 2x is 500 px: about two 224-px tiles per axis.
        assert_eq!(
            Tiling::for_upscale(2.0, 0.0, (250, 250), (224, 224)),
            grid(2, 2, 0.0)
        );
        // No upscale of a frame the model's size: one tile.
        assert_eq!(
            Tiling::for_upscale(1.0, 0.0, (224, 224), (224, 224)),
            grid(1, 1, 0.0)
        );
        // 1920x1080 at 1x with 25% overlap: spans 8.57 x 4.82 tiles -> 11 x 6 with overlap.
        assert_eq!(
            Tiling::for_upscale(1.0, 0.25, (1920, 1080), (224, 224)),
            grid(6, 11, 0.25)
        );
    }

    #[test]
    fn letterbox_placement_keeps_the_aspect_ratio() {
        // 300x100 into 224x224: scale 224/300, height 74.67 -> 75, centred at row 74.
        let wide = Placement::of(Resize::Letterbox, (300.0, 100.0), (224, 224));
        assert_eq!((wide.x, wide.y, wide.width, wide.height), (0, 74, 224, 75));
        let tall = Placement::of(Resize::Letterbox, (50.0, 100.0), (224, 224));
        assert_eq!((tall.x, tall.y, tall.width, tall.height), (56, 0, 112, 224));
        let squashed = Placement::of(Resize::Squash, (300.0, 100.0), (224, 224));
        assert_eq!(
            (squashed.x, squashed.y, squashed.width, squashed.height),
            (0, 0, 224, 224)
        );
        // Square tiles fill a square input either way.
        let square = Tiling {
            resize: Resize::Letterbox,
            ..grid(2, 2, 0.0)
        };
        assert_eq!(square.placement(250, 250, (224, 224)), squashed);
        assert_eq!("letterbox".parse::<Resize>(), Ok(Resize::Letterbox));
        assert!("crop".parse::<Resize>().is_err());
    }

    #[test]
    fn letterboxed_maps_are_cropped_to_the_content() {
        // An 8x4 frame letterboxed into an 8x8 input fills input rows 2..6, i.e. rows 1..3 of
        // a 4x4 tile map; output row o (centre o + 0.5 px) samples map row 0.75 + o / 2.
        let tiling = Tiling {
            resize: Resize::Letterbox,
            ..Tiling::whole()
        };
        let mut s = Stitcher::new(&tiling, (8, 4), (4, 4), (8, 8)).unwrap();
        let map: Vec<f32> = (0..16).map(|i| 10.0 * (i / 4) as f32).collect();
        s.add(0, &map);
        let (out, w, h) = s.finish();
        assert_eq!((w, h), (4, 4));
        for (row, want) in [7.5, 12.5, 17.5, 22.5].iter().enumerate() {
            for col in 0..4 {
                assert!((out[row * 4 + col] - want).abs() < 1e-4, "{out:?}");
            }
        }
    }

    #[test]
    fn validation() {
        assert!(grid(3, 4, 0.9).validate().is_ok());
        assert!(grid(0, 1, 0.0).validate().is_err());
        assert!(grid(1, 0, 0.0).validate().is_err());
        assert!(grid(1, 65, 0.0).validate().is_err());
        assert!(grid(2, 2, 0.95).validate().is_err());
        assert!(grid(2, 2, -0.1).validate().is_err());
        assert!(grid(2, 2, f32::NAN).validate().is_err());
        assert!(Stitcher::new(&grid(0, 1, 0.0), (10, 10), (4, 4), (224, 224)).is_err());
        assert!(Stitcher::new(&Tiling::whole(), (0, 10), (4, 4), (224, 224)).is_err());
        assert!(Stitcher::new(&Tiling::whole(), (10, 10), (0, 4), (224, 224)).is_err());
    }

    #[test]
    fn serde_roundtrip() {
        let t = grid(2, 3, 0.25);
        let back: Tiling = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn whole_stitch_is_identity() {
        for (fw, fh, gw, gh) in [
            (448, 448, 64, 64),
            (333, 97, 17, 9),
            (1, 1, 3, 2),
            (5, 3, 7, 7),
        ] {
            let map: Vec<f32> = (0..gw * gh)
                .map(|i| ((i * 7919) % 101) as f32 / 7.0 - 3.0)
                .collect();
            let mut s = Stitcher::new(&Tiling::whole(), (fw, fh), (gw, gh), (224, 224)).unwrap();
            s.add(0, &map);
            let (out, w, h) = s.finish();
            assert_eq!((w, h), (gw, gh));
            assert_eq!(out, map, "frame {fw}x{fh} grid {gw}x{gh}");
        }
        // Non-finite values pass through untouched.
        let map = vec![f32::INFINITY, 1.0, f32::NAN, 2.0];
        let mut s = Stitcher::new(&Tiling::whole(), (10, 10), (2, 2), (224, 224)).unwrap();
        s.add(0, &map);
        let (out, _, _) = s.finish();
        assert_eq!(out[0], f32::INFINITY);
        assert_eq!(out[1], 1.0);
        assert!(out[2].is_nan());
        assert_eq!(out[3], 2.0);
    }

    #[test]
    fn constant_maps_stay_constant() {
        for (t, fw, fh) in [
            (grid(2, 2, 0.25), 250, 250),
            (grid(2, 3, 0.5), 400, 200),
            (grid(3, 2, 0.1), 123, 457),
        ] {
            let mut s = Stitcher::new(&t, (fw, fh), (8, 6), (224, 224)).unwrap();
            for i in 0..(t.rows * t.cols) as usize {
                s.add(i, &[0.7; 48]);
            }
            let (out, w, h) = s.finish();
            assert_eq!((w, h), t.map_size(8, 6));
            assert!(out.iter().all(|&v| (v - 0.7).abs() < 1e-6), "{t:?}");
        }
    }

    #[test]
    fn quadrants_without_overlap() {
        // Each tile constant = its index: the output holds the index in the matching quadrant.
        let mut s = Stitcher::new(&grid(2, 2, 0.0), (250, 250), (4, 4), (224, 224)).unwrap();
        for i in 0..4 {
            s.add(i, &[i as f32; 16]);
        }
        let (out, w, h) = s.finish();
        assert_eq!((w, h), (8, 8));
        for y in 0..8 {
            for x in 0..8 {
                let want = (y / 4) * 2 + x / 4;
                assert_eq!(out[y * 8 + x], want as f32, "cell {x},{y}");
            }
        }
    }

    #[test]
    fn spike_lands_in_place() {
        let mut s = Stitcher::new(&grid(2, 2, 0.0), (250, 250), (4, 4), (224, 224)).unwrap();
        for i in 0..4 {
            let mut m = [0.0f32; 16];
            if i == 3 {
                m[2 * 4 + 1] = 1.0; // tile row 2, col 1
            }
            s.add(i, &m);
        }
        let (out, w, _) = s.finish();
        let hot: Vec<usize> = (0..out.len()).filter(|&i| out[i] != 0.0).collect();
        // Bottom-right tile starts at output cell (4, 4).
        assert_eq!(hot, vec![(4 + 2) * w + (4 + 1)]);
        assert_eq!(out[6 * w + 5], 1.0);

        // With overlap the spike spreads bilinearly but peaks at the right place.
        let t = grid(2, 2, 0.25);
        let mut s = Stitcher::new(&t, (700, 700), (8, 8), (224, 224)).unwrap();
        for i in 0..4 {
            let mut m = [0.0f32; 64];
            if i == 0 {
                m[3 * 8 + 2] = 1.0; // tile 0 cell (2, 3), centre at (2.5, 3.5) / 8 of the tile
            }
            s.add(i, &m);
        }
        let (out, w, h) = s.finish();
        assert_eq!((w, h), (14, 14));
        let argmax = (0..out.len())
            .max_by(|&a, &b| out[a].total_cmp(&out[b]))
            .unwrap();
        // Tile 0 spans 400 px; spike centre at (125, 175) px; output cells are 50 px: (2, 3).
        assert_eq!((argmax % w, argmax / w), (2, 3));
        assert!(out[argmax] > 0.5);
    }

    #[test]
    fn overlap_cells_are_averaged() {
        // 1x2 tiles, half overlap, 300 px wide: tiles [0, 200] and [100, 300], 2-cell maps.
        // Output 3 cells centred at 50, 150, 250 px: cell 1 is seen by both tiles.
        let t = grid(1, 2, 0.5);
        let mut s = Stitcher::new(&t, (300, 10), (2, 1), (224, 224)).unwrap();
        s.add(0, &[1.0, 2.0]);
        s.add(1, &[10.0, 20.0]);
        let (out, w, h) = s.finish();
        assert_eq!((w, h), (3, 1));
        assert_eq!(out, vec![1.0, 6.0, 20.0]);
    }

    #[test]
    fn bilinear_between_cell_centres() {
        // 1x2 tiles, quarter overlap, 350 px: tiles [0, 200] and [150, 350], 2-cell maps,
        // output round(3.5) = 4 cells of 87.5 px centred at 43.75, 131.25, 218.75, 306.25.
        let t = grid(1, 2, 0.25);
        let mut s = Stitcher::new(&t, (350, 10), (2, 1), (224, 224)).unwrap();
        s.add(0, &[1.0, 2.0]);
        s.add(1, &[10.0, 20.0]);
        let (out, w, _) = s.finish();
        assert_eq!(w, 4);
        // Tile 0: u = 43.75/100 - 0.5 < 0 -> clamped; 131.25 -> u = 0.8125.
        // Tile 1: 218.75 -> u = 0.1875; 306.25 -> u = 1.0625 -> clamped.
        let want = [1.0, 1.0 + 0.8125, 10.0 + 10.0 * 0.1875, 20.0];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn finish_resets_and_missing_tiles_are_zero() {
        let mut s = Stitcher::new(&grid(1, 2, 0.0), (100, 50), (2, 2), (224, 224)).unwrap();
        s.add(0, &[3.0; 4]);
        let (out, w, h) = s.finish();
        assert_eq!((w, h), (4, 2));
        assert_eq!(out, vec![3.0, 3.0, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0]);
        let (out, w, h) = s.finish();
        assert!(out.iter().all(|&v| v == 0.0));
        assert_eq!((w, h), (4, 2));
    }

    #[test]
    #[should_panic(expected = "tile index 2 out of range")]
    fn wrong_tile_index_panics() {
        let mut s = Stitcher::new(&grid(1, 2, 0.0), (100, 50), (2, 2), (224, 224)).unwrap();
        s.add(2, &[0.0; 4]);
    }
}
