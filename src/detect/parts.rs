//! Parts without text: the part classes of a product learned by clustering the reference
//! images' patch features, a part label per cell of a frame, and each part's instances
//! (connected components), as the LogSAD reference finds them after segmentation.

/// One part class per cell of the part grid (row-major, `width * height`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    /// Part index per cell; [`LabelMap::background`] marks the background.
    pub labels: Vec<u16>,
    /// The background part's index.
    pub background: u16,
}

/// Which neighbours join cells into one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    /// Edge neighbours only.
    Four,
    /// Edge and corner neighbours (the reference counts pins 8-connected).
    #[default]
    Eight,
}

/// One connected instance of a part on the part grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Part index.
    pub part: u16,
    /// Indices of its cells in the [`LabelMap`], ascending.
    pub cells: Vec<u32>,
    /// Centre of mass in cells (x, y), cell centres at +0.5.
    pub centroid: (f32, f32),
}

impl Instance {
    /// Area in cells.
    pub fn area(&self) -> usize {
        self.cells.len()
    }
}
