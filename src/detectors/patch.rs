//! The patch detector (paper eq. 1): every patch of the frame matched against the memory bank of
//! reference patches; the anomaly map is one minus the best cosine similarity, averaged over
//! stages, and the image score a reduction of it (the maximum in the reference).

use crate::detect::cost::matching_flops;
use crate::detect::features::PatchFeatures;
use crate::detect::patch::{anomaly_map_with, sparse_anomaly_maps, MatchScratch, MemoryBank};
use crate::detect::preprocess::RgbImage;
use crate::detect::score::{gaussian_blur, reduce, Reduction};
use crate::detect::tiling::{Neighbourhood, Stitcher, Tiling};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What a patch detector matches against its bank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Every patch vector (the reference's patch detector).
    #[default]
    None,
    /// One vector per tile and stage, the mean of its tokens: the nearest reference tile by
    /// overall appearance, which sees changes spread over the whole tile.
    Mean,
}

impl Pooling {
    /// The bank's token grid and upsampling for a model grid and the reference's upsampling.
    pub fn bank_grid(self, model_grid: (usize, usize), upsample: usize) -> ((usize, usize), usize) {
        match self {
            Pooling::None => (model_grid, upsample),
            Pooling::Mean => ((1, 1), 1),
        }
    }
}

/// A patch detector: how frames are cut, what is matched, how its map becomes a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchSpec {
    /// Reported as the detector's name in metadata, e.g. "patch".
    pub name: String,
    /// How frames are cut into model inputs; enrollment and detection must agree.
    pub tiling: Tiling,
    /// How the map becomes the image score (the reference takes the maximum).
    pub score: Reduction,
    /// Gaussian smoothing of the map before scoring, sigma in map cells (0: none, the reference).
    pub smoothing: f32,
    /// Absent from profiles written before pooling existed: none.
    #[serde(default)]
    pub pooling: Pooling,
    /// Which reference tiles each tile is matched against; absent from profiles written
    /// before it existed: all.
    #[serde(default)]
    pub neighbourhood: Neighbourhood,
}

impl PatchSpec {
    /// The reference detector: whole frame, maximum of the raw map.
    pub fn faithful() -> Self {
        PatchSpec {
            name: "patch".into(),
            tiling: Tiling::whole(),
            score: Reduction::Max,
            smoothing: 0.0,
            pooling: Pooling::None,
            neighbourhood: Neighbourhood::All,
        }
    }

    /// Whether two specs fill the same memory bank (same tiles, same pooling).
    pub fn same_bank(&self, other: &PatchSpec) -> bool {
        self.tiling == other.tiling && self.pooling == other.pooling
    }
}

/// A patch detector's result on one image.
#[derive(Debug, Clone)]
pub struct PatchResult {
    /// Raw image score under the spec's reduction.
    pub raw: f64,
    /// The stitched (and, if asked, smoothed) anomaly map, covering the whole image, row-major.
    pub map: Vec<f32>,
    pub map_width: usize,
    pub map_height: usize,
    /// The tile grid (rows, cols) the map was stitched from.
    pub tiles: (usize, usize),
    /// Where the time went.
    pub timings: PatchTimings,
    /// FLOPs of the matcher's matrix products for this image, all tiles and stages (see
    /// [`crate::detect::cost::matching_flops`]).
    pub matching_flops: u64,
}

/// Where a patch detector's time on one image went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PatchTimings {
    /// Pooling (if any) and the nearest-neighbour search of every tile.
    pub nearest_neighbour: Duration,
    /// The tile maps put into one map, and its smoothing.
    pub stitching: Duration,
    /// The map's reduction to the raw image score.
    pub scoring: Duration,
}

/// Scores the tile features of one image against the detector's bank; `input` is the model's
/// input size (width, height) the tiles went through. Errors name a tiling that does not fit
/// the image, or a neighbourhood left `auto` (enrollment resolves it).
pub fn score(
    spec: &PatchSpec,
    bank: &MemoryBank,
    tiles: &[PatchFeatures],
    image: &RgbImage,
    input: (u32, u32),
) -> Result<PatchResult, String> {
    let start = Instant::now();
    let pooled: Vec<PatchFeatures>;
    let tiles = match spec.pooling {
        Pooling::None => tiles,
        Pooling::Mean => {
            pooled = tiles.iter().map(PatchFeatures::mean_pooled).collect();
            &pooled
        }
    };
    if spec.neighbourhood == Neighbourhood::Auto {
        return Err(format!(
            "detector {}: tile neighbourhood 'auto' is resolved at enrollment; enroll again",
            spec.name
        ));
    }
    let grid = (tiles[0].width(), tiles[0].height());
    let mut stitcher = Stitcher::new(&spec.tiling, (image.width, image.height), grid, input)?;
    let mut scratch = MatchScratch::default();
    let allow =
        |tile: usize| move |block: usize| spec.neighbourhood.allows(&spec.tiling, tile, block);
    let maps = if bank.is_sparse() && spec.neighbourhood == Neighbourhood::All {
        // Every tile sees the same blocks: all tiles in one product per stage.
        sparse_anomaly_maps(tiles, bank, &|_| true, &mut scratch)
    } else {
        (tiles.iter().enumerate())
            .map(|(i, tile)| anomaly_map_with(tile, bank, &allow(i), &mut scratch))
            .collect()
    };
    let flops = (tiles.iter().enumerate())
        .map(|(i, tile)| matching_flops(tile, bank, allow(i)))
        .sum();
    let matched = Instant::now();
    for (i, map) in maps.iter().enumerate() {
        stitcher.add(i, map);
    }
    let (map, map_width, map_height) = stitcher.finish();
    let map = gaussian_blur(&map, map_width, map_height, spec.smoothing);
    let stitched = Instant::now();
    let raw = reduce(&map, spec.score);
    let timings = PatchTimings {
        nearest_neighbour: matched - start,
        stitching: stitched - matched,
        scoring: stitched.elapsed(),
    };
    Ok(PatchResult {
        raw,
        map,
        map_width,
        map_height,
        tiles: (spec.tiling.rows as usize, spec.tiling.cols as usize),
        timings,
        matching_flops: flops,
    })
}
