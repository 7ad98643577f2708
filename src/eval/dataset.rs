//! Reading anomaly-detection datasets in their distributed folder layouts.
//!
//! GStreamer-free. Four layouts are understood:
//!
//! * **MVTec AD** ([`Layout::MvtecAd`]): `<category>/train/good/*`, `<category>/test/<type>/*`
//!   (type `good` = normal) and `<category>/ground_truth/<type>/<stem>_mask.png`. The root
//!   may be the dataset root (categories as sub-folders; other entries such as `license.txt`
//!   are ignored) or one category folder.
//! * **MVTec LOCO** ([`Layout::MvtecLoco`]): like MVTec AD plus `<category>/validation/good/*`;
//!   the test types are `good`, `logical_anomalies` and `structural_anomalies`, and the ground
//!   truth is `ground_truth/<type>/<stem>/*.png` (several masks per image, their union marks
//!   the anomalous pixels). Anomalous samples carry their [`Split`]; good samples have
//!   `split: None` and belong to both splits (see [`Sample::belongs_to`]).
//! * **VisA** ([`Layout::Visa`]): `<root>/split_csv/1cls.csv` with (at least) the columns
//!   `object,split,label,image,mask`, in any order. The category is `object`; the training
//!   images are the `train` rows labelled `normal` (other `train` rows are ignored); the test
//!   samples are the `test` rows, with defect `"anomaly"` or `"good"`. Paths are relative to
//!   the root. An image or mask listed in the CSV that does not exist is an error.
//! * **Plain** ([`Layout::Plain`]): `<root>/<good>/*` next to `<root>/<defect type>/*`. The
//!   good folder is [`LoadOptions::good_folder`] or else the first existing one of `good`,
//!   `nominal`, `normal`, `ok` (case-insensitive). There is no train split, so the good
//!   images, sorted by name, are split in half: the first `ceil(n / 2)` are training images,
//!   the rest are normal test samples. Every other sub-folder holding at least one image is a
//!   defect type (its name is the defect). There are no masks. The one category is named
//!   after the root folder; a root that holds only sub-roots of that shape (each a good
//!   folder plus at least one defect folder) gives one category per sub-root.
//!
//! Image files are those ending in `png`, `jpg`, `jpeg`, `bmp`, `tif` or `tiff`
//! (case-insensitive); only the files directly inside a folder count, and names starting
//! with `.` are skipped. Lists are sorted by path (for files of one folder: by name, byte-wise).
//! Missing masks of anomalous MVTec AD / LOCO images are not an error: the mask list is empty.
//!
//! **Anomaly subtypes** ([`Sample::subtype`]) of the anomalous test images of an MVTec category
//! (AD or LOCO), from two sources, in this order (see [`subtypes_of_category`]):
//!
//! 1. `<category>/defects_config.json` ([`DEFECTS_CONFIG`], the MVTec LOCO convention): a JSON
//!    list of `{"defect_name": "...", "pixel_value": 0..=255, ...}` (other fields ignored). Each
//!    mask of an image carries its defect's `pixel_value` on its non-zero pixels; see
//!    [`masks_subtype`].
//! 2. `<category>/logic.json` ([`LOGIC_KEY`], written by `logsad synth --loco`): an object whose
//!    `test` list holds `{"image": "test/logical_anomalies/000.png", "anomaly": "missing_pin"
//!    | null, ...}` (`image` relative to the category folder, other fields ignored); `anomaly`
//!    is the subtype. Used for the images the first source leaves without a subtype.
//!
//! Good images and anomalous images neither source names keep `None`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::GrayImage;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Image file extensions that are read (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Folder names tried, in order and case-insensitively, as the good folder of the plain layout.
pub const PLAIN_GOOD_FOLDERS: [&str; 4] = ["good", "nominal", "normal", "ok"];

/// The VisA split file, relative to the dataset root.
pub const VISA_CSV: &str = "split_csv/1cls.csv";

/// The MVTec LOCO file naming each category's defect types and their mask pixel values,
/// relative to the category folder.
pub const DEFECTS_CONFIG: &str = "defects_config.json";

/// The answer key of synthetic scenes (`logsad synth --loco`), relative to the category folder.
pub const LOGIC_KEY: &str = "logic.json";

/// Default number of validation images taken from the end of the training images.
pub const DEFAULT_VALIDATION_COUNT: usize = 20;

/// Dataset folder layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "mvtec-ad")]
    MvtecAd,
    #[serde(rename = "mvtec-loco")]
    MvtecLoco,
    #[serde(rename = "visa")]
    Visa,
    #[serde(rename = "plain")]
    Plain,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::MvtecAd,
        Layout::MvtecLoco,
        Layout::Visa,
        Layout::Plain,
    ];

    /// The name used by [`FromStr`] and [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            Layout::MvtecAd => "mvtec-ad",
            Layout::MvtecLoco => "mvtec-loco",
            Layout::Visa => "visa",
            Layout::Plain => "plain",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layout::ALL
            .into_iter()
            .find(|layout| layout.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| DatasetError::UnknownLayoutName(s.to_string()))
    }
}

/// MVTec LOCO test split of an anomalous sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Logical,
    Structural,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Logical, Split::Structural];

    pub fn name(self) -> &'static str {
        match self {
            Split::Logical => "logical",
            Split::Structural => "structural",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One test image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    pub anomalous: bool,
    /// Defect type; `"good"` for normal samples.
    pub defect: String,
    /// MVTec LOCO split of an anomalous sample; `None` for good samples and other layouts.
    pub split: Option<Split>,
    /// Ground-truth masks (0..n); their union marks the anomalous pixels.
    pub masks: Vec<PathBuf>,
    /// Anomaly subtype of an anomalous sample (such as `missing_pin` or
    /// `missing_almonds+extra_banana`), from the category's `defects_config.json` and masks or
    /// its `logic.json` (see the module documentation); `None` for good samples, for other
    /// layouts and where neither names one. Absent from older serialisations: `None`.
    #[serde(default)]
    pub subtype: Option<String>,
}

impl Sample {
    /// Whether the sample takes part in the evaluation of a MVTec LOCO split: anomalous
    /// samples belong to their own split, good samples (`split: None`) to both.
    pub fn belongs_to(&self, split: Split) -> bool {
        match self.split {
            Some(own) => own == split,
            None => !self.anomalous,
        }
    }
}

/// One object / texture category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub name: String,
    /// Anomaly-free training images, sorted by name.
    pub train: Vec<PathBuf>,
    /// The dataset's own anomaly-free validation images (MVTec LOCO); empty otherwise.
    pub validation: Vec<PathBuf>,
    /// Test samples, sorted by path.
    pub test: Vec<Sample>,
}

/// A loaded dataset; categories are sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub layout: Layout,
    pub root: PathBuf,
    pub categories: Vec<Category>,
}

/// What to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Category names to load (in dataset order); empty = all. Unknown names are an error.
    pub categories: Vec<String>,
    /// Name of the good folder of the plain layout (matched case-insensitively); `None` =
    /// the first existing one of [`PLAIN_GOOD_FOLDERS`].
    pub good_folder: Option<String>,
}

/// How the reference (few-shot memory) and validation images are chosen from a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// Number of reference images; `None` = full data (the whole reference pool).
    pub shots: Option<usize>,
    /// `None` = the first `k` of the pool by sorted name (as the LogSAD authors); `Some` =
    /// `k` drawn without replacement with `StdRng::seed_from_u64(seed)`, then sorted.
    pub seed: Option<u64>,
    /// Validation images taken from the end of the training images when the dataset has no
    /// validation split of its own.
    pub validation_count: usize,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            shots: None,
            seed: None,
            validation_count: DEFAULT_VALIDATION_COUNT,
        }
    }
}

/// Errors while reading a dataset or applying a [`Protocol`].
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("unknown dataset layout '{0}' (expected mvtec-ad, mvtec-loco, visa or plain)")]
    UnknownLayoutName(String),
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot detect the dataset layout of {}: looked for {looked_for}", root.display())]
    UnknownLayout { root: PathBuf, looked_for: String },
    #[error("{}: missing {what}", path.display())]
    Missing { path: PathBuf, what: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}, line {line}: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: missing column '{column}' (the header has: {header})", path.display())]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: String,
    },
    #[error("{}: listed in {} (line {line}) but does not exist", path.display(), csv.display())]
    MissingListedFile {
        path: PathBuf,
        csv: PathBuf,
        line: usize,
    },
    #[error("{}: no category '{name}' (available: {available})", root.display())]
    UnknownCategory {
        root: PathBuf,
        name: String,
        available: String,
    },
    #[error("category '{category}': {message}")]
    Protocol { category: String, message: String },
}

type Result<T, E = DatasetError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// File system helpers

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Entries of a directory (hidden ones skipped), sorted by name: (name, path, is_dir).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links. Anything else (a named pipe, a dangling link, a link loop)
        // is kept as a file: the loader refuses it by name and cause, and the report lists it.
        let is_dir = path.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort();
    Ok(out)
}

fn sub_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| e.2)
        .map(|e| (e.0, e.1))
        .collect())
}

/// Image files directly inside `dir`, sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| !e.2 && is_image_path(&e.1))
        .map(|e| e.1)
        .collect())
}

fn has_images(dir: &Path) -> Result<bool> {
    Ok(!images_in(dir)?.is_empty())
}

fn require_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        Ok(())
    } else if path.exists() {
        Err(DatasetError::NotADirectory {
            path: path.to_path_buf(),
        })
    } else {
        Err(DatasetError::Missing {
            path: path.to_path_buf(),
            what: "folder (does not exist)".into(),
        })
    }
}

/// Name for a category that is the root folder itself.
fn folder_name(path: &Path) -> String {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
    name(path)
        .or_else(|| path.canonicalize().ok().and_then(|p| name(&p)))
        .unwrap_or_else(|| "dataset".to_string())
}

// ---------------------------------------------------------------------------------------
// Detection

const LOOKED_FOR: &str = "split_csv/1cls.csv (VisA); train/good and test in the folder or in \
    its sub-folders (MVTec AD, plus validation/good for MVTec LOCO); a good folder (good, \
    nominal, normal or ok) next to at least one other folder of images, in the folder or in \
    each of its sub-folders (plain)";

/// Detects the layout of a dataset root (or, for MVTec, of one category folder).
///
/// `split_csv/1cls.csv` → VisA; a category folder (the root or its sub-folders) with
/// `train/good` and `test` → MVTec LOCO if every such category also has `validation/good`,
/// else MVTec AD; otherwise plain if a good folder and at least one other image folder exist
/// (in the root, or in each of its sub-folders); otherwise an error listing what was looked for.
pub fn detect_layout(root: &Path) -> Result<Layout, DatasetError> {
    detect_with(root, None)
}

fn detect_with(root: &Path, good_folder: Option<&str>) -> Result<Layout> {
    require_dir(root)?;
    if root.join(VISA_CSV).is_file() {
        return Ok(Layout::Visa);
    }
    let categories = mvtec_category_dirs(root)?;
    if !categories.is_empty() {
        let loco = categories
            .iter()
            .all(|(_, dir)| dir.join("validation/good").is_dir());
        return Ok(if loco {
            Layout::MvtecLoco
        } else {
            Layout::MvtecAd
        });
    }
    if !plain_roots(root, good_folder)?.is_empty() {
        return Ok(Layout::Plain);
    }
    Err(DatasetError::UnknownLayout {
        root: root.to_path_buf(),
        looked_for: LOOKED_FOR.to_string(),
    })
}

fn is_mvtec_category(dir: &Path) -> bool {
    dir.join("train/good").is_dir() && dir.join("test").is_dir()
}

/// Complete MVTec categories: the root itself, or else its sub-folders.
fn mvtec_category_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    if is_mvtec_category(root) {
        return Ok(vec![(folder_name(root), root.to_path_buf())]);
    }
    Ok(sub_dirs(root)?
        .into_iter()
        .filter(|(_, dir)| is_mvtec_category(dir))
        .collect())
}

// ---------------------------------------------------------------------------------------
// Loading

/// Loads a dataset. `layout: None` detects it (the plain layout's good folder is then looked
/// up with `options.good_folder` too).
pub fn load(
    root: &Path,
    layout: Option<Layout>,
    options: &LoadOptions,
) -> Result<Dataset, DatasetError> {
    require_dir(root)?;
    let layout = match layout {
        Some(layout) => layout,
        None => detect_with(root, options.good_folder.as_deref())?,
    };
    let names = |cats: &[(String, PathBuf)]| cats.iter().map(|c| c.0.clone()).collect::<Vec<_>>();
    let categories = match layout {
        Layout::MvtecAd | Layout::MvtecLoco => {
            let dirs = mvtec_categories_checked(root, layout)?;
            let wanted = select(root, &names(&dirs), &options.categories)?;
            dirs.into_iter()
                .filter(|(name, _)| wanted.contains(name))
                .map(|(name, dir)| load_mvtec_category(name, &dir, layout))
                .collect::<Result<Vec<_>>>()?
        }
        Layout::Visa => {
            let all = load_visa(root)?;
            let all_names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
            let wanted = select(root, &all_names, &options.categories)?;
            all.into_iter()
                .filter(|c| wanted.contains(&c.name))
                .collect()
        }
        Layout::Plain => {
            let roots = plain_roots(root, options.good_folder.as_deref())?;
            if roots.is_empty() {
                return Err(plain_missing(root, options.good_folder.as_deref()));
            }
            let cat_names: Vec<String> = roots.iter().map(|r| r.name.clone()).collect();
            let wanted = select(root, &cat_names, &options.categories)?;
            roots
                .into_iter()
                .filter(|r| wanted.contains(&r.name))
                .map(load_plain_category)
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(Dataset {
        layout,
        root: root.to_path_buf(),
        categories,
    })
}

/// Checks requested category names against the available ones; returns the names to load.
fn select(root: &Path, available: &[String], requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(available.to_vec());
    }
    for name in requested {
        if !available.contains(name) {
            return Err(DatasetError::UnknownCategory {
                root: root.to_path_buf(),
                name: name.clone(),
                available: available.join(", "),
            });
        }
    }
    Ok(requested.to_vec())
}

/// MVTec categories for loading: a folder that has `train` or `test` must be a complete
/// category (else an error names what is missing); other folders are ignored.
fn mvtec_categories_checked(root: &Path, layout: Layout) -> Result<Vec<(String, PathBuf)>> {
    let looks_like = |dir: &Path| dir.join("train").exists() || dir.join("test").exists();
    let candidates = if looks_like(root) {
        vec![(folder_name(root), root.to_path_buf())]
    } else {
        sub_dirs(root)?
            .into_iter()
            .filter(|(_, d)| looks_like(d))
            .collect()
    };
    if candidates.is_empty() {
        return Err(DatasetError::Missing {
            path: root.to_path_buf(),
            what: format!("{layout} category (looked for train/good and test in the folder and in its sub-folders)"),
        });
    }
    for (_, dir) in &candidates {
        require_dir(&dir.join("train/good"))?;
        require_dir(&dir.join("test"))?;
        if layout == Layout::MvtecLoco {
            require_dir(&dir.join("validation/good"))?;
        }
    }
    Ok(candidates)
}

fn load_mvtec_category(name: String, dir: &Path, layout: Layout) -> Result<Category> {
    let train = images_in(&dir.join("train/good"))?;
    if train.is_empty() {
        return Err(DatasetError::Invalid {
            path: dir.join("train/good"),
            message: "no training images".into(),
        });
    }
    let validation = if layout == Layout::MvtecLoco {
        images_in(&dir.join("validation/good"))?
    } else {
        Vec::new()
    };
    let mut test = Vec::new();
    for (kind, kind_dir) in sub_dirs(&dir.join("test"))? {
        let good = kind == "good";
        let split = match (layout, kind.as_str()) {
            (_, "good") => None,
            (Layout::MvtecLoco, "logical_anomalies") => Some(Split::Logical),
            (Layout::MvtecLoco, "structural_anomalies") => Some(Split::Structural),
            (Layout::MvtecLoco, _) => {
                return Err(DatasetError::Invalid {
                    path: kind_dir,
                    message: "unexpected MVTec LOCO test folder (expected good, logical_anomalies \
                              or structural_anomalies)"
                        .into(),
                })
            }
            _ => None,
        };
        for path in images_in(&kind_dir)? {
            let masks = if good {
                Vec::new()
            } else {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                let gt = dir.join("ground_truth").join(&kind);
                if layout == Layout::MvtecLoco {
                    let mask_dir = gt.join(stem);
                    if mask_dir.is_dir() {
                        images_in(&mask_dir)?
                    } else {
                        Vec::new()
                    }
                } else {
                    let mask = gt.join(format!("{stem}_mask.png"));
                    if mask.is_file() {
                        vec![mask]
                    } else {
                        Vec::new()
                    }
                }
            };
            test.push(Sample {
                path,
                anomalous: !good,
                defect: kind.clone(),
                split,
                masks,
                subtype: None,
            });
        }
    }
    test.sort_by(|a, b| a.path.cmp(&b.path));
    subtypes_of_category(dir, &mut test)?;
    Ok(Category {
        name,
        train,
        validation,
        test,
    })
}

// --- Anomaly subtypes

/// Reads `defects_config.json` (MVTec LOCO): a JSON list of objects with `defect_name` (a
/// string) and `pixel_value` (an integer 0..=255); other fields are ignored. Returns the
/// defect name of each pixel value; a value listed for two different names is left out (it
/// tells the defects apart no more: their masks name no subtype).
pub fn read_defects_config(path: &Path) -> Result<BTreeMap<u8, String>, DatasetError> {
    #[derive(Deserialize)]
    struct Entry {
        defect_name: String,
        pixel_value: u8,
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| DatasetError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "expected a list of {{\"defect_name\": ..., \"pixel_value\": 0..255}}: {e}"
        ),
    })?;
    let mut names: BTreeMap<u8, Option<String>> = BTreeMap::new();
    for entry in entries {
        let name = names
            .entry(entry.pixel_value)
            .or_insert(Some(entry.defect_name.clone()));
        // One value for two defects names neither: such masks fall back to logic.json.
        if name.as_deref() != Some(entry.defect_name.as_str()) {
            *name = None;
        }
    }
    Ok(names
        .into_iter()
        .filter_map(|(value, name)| Some((value, name?)))
        .collect())
}

/// Reads the test list of a `logic.json` answer key: each entry's `image` (relative to the
/// category folder, `/`-separated) with its `anomaly` (a string, or `null` / absent for good
/// and structural images). Entries without a string `image` are skipped; other fields are
/// ignored. Errors when the file is not JSON or has no `test` list.
pub fn read_logic_key(path: &Path) -> Result<Vec<(PathBuf, Option<String>)>, DatasetError> {
    let invalid = |message: String| DatasetError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let test = value
        .get("test")
        .and_then(|t| t.as_array())
        .ok_or_else(|| invalid("expected an object with a `test` list".into()))?;
    Ok(test
        .iter()
        .filter_map(|entry| {
            let image = entry.get("image")?.as_str()?;
            let anomaly = entry
                .get("anomaly")
                .and_then(|a| a.as_str())
                .map(str::to_string);
            Some((image.split('/').collect::<PathBuf>(), anomaly))
        })
        .collect())
}

/// The subtype of an image from its ground-truth masks and the pixel values of
/// [`read_defects_config`]: each mask names the defect of its most frequent non-zero pixel
/// value among those `names` knows (ties: the smaller value); a mask with none names nothing.
/// The distinct names, sorted, are joined with `+`; `None` when no mask names one.
pub fn masks_subtype(masks: &[GrayImage], names: &BTreeMap<u8, String>) -> Option<String> {
    let mut found = BTreeSet::new();
    for mask in masks {
        let mut counts = [0usize; 256];
        for &v in mask.as_raw() {
            counts[v as usize] += 1;
        }
        let best = (1..256)
            .filter(|&v| counts[v] > 0 && names.contains_key(&(v as u8)))
            .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)));
        if let Some(v) = best {
            found.insert(names[&(v as u8)].as_str());
        }
    }
    (!found.is_empty()).then(|| found.into_iter().collect::<Vec<_>>().join("+"))
}

/// Reads an 8-bit grey mask as stored (values are not rescaled).
fn read_mask(path: &Path) -> Result<GrayImage> {
    crate::imageio::load(path)
        .map(|m| m.into_luma8())
        .map_err(|e| DatasetError::Invalid {
            path: path.to_path_buf(),
            message: format!("cannot read the mask: {e}"),
        })
}

/// Fills [`Sample::subtype`] of the anomalous samples of the category in `dir`: from
/// `defects_config.json` and each sample's masks where the file exists (the masks are decoded
/// here, on several threads), then from `logic.json` for those still without one. Neither
/// file: nothing changes.
pub fn subtypes_of_category(dir: &Path, test: &mut [Sample]) -> Result<(), DatasetError> {
    let config = dir.join(DEFECTS_CONFIG);
    if config.is_file() {
        let names = read_defects_config(&config)?;
        let wanted: Vec<usize> = (0..test.len())
            .filter(|&i| test[i].anomalous && !test[i].masks.is_empty())
            .collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(wanted.len().max(1));
        let samples: &[Sample] = test;
        let found: Vec<Result<(usize, Option<String>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (wanted, names) = (&wanted, &names);
                    scope.spawn(move || {
                        wanted
                            .iter()
                            .skip(w)
                            .step_by(workers)
                            .map(|&i| {
                                let masks = samples[i]
                                    .masks
                                    .iter()
                                    .map(|p| read_mask(p))
                                    .collect::<Result<Vec<_>>>()?;
                                Ok((i, masks_subtype(&masks, names)))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("mask reader panicked"))
                .collect()
        });
        for result in found {
            let (i, subtype) = result?;
            test[i].subtype = subtype;
        }
    }
    let key = dir.join(LOGIC_KEY);
    if key.is_file() && test.iter().any(|s| s.anomalous && s.subtype.is_none()) {
        let entries: HashMap<PathBuf, Option<String>> = read_logic_key(&key)?.into_iter().collect();
        for sample in test
            .iter_mut()
            .filter(|s| s.anomalous && s.subtype.is_none())
        {
            let Ok(rel) = sample.path.strip_prefix(dir) else {
                continue;
            };
            if let Some(Some(anomaly)) = entries.get(rel) {
                sample.subtype = Some(anomaly.clone());
            }
        }
    }
    Ok(())
}

// --- VisA

const VISA_COLUMNS: [&str; 5] = ["object", "split", "label", "image", "mask"];

fn load_visa(root: &Path) -> Result<Vec<Category>> {
    let csv_path = root.join(VISA_CSV);
    let text = fs::read_to_string(&csv_path).map_err(io_err(&csv_path))?;
    let records = parse_csv(&text).map_err(|(line, message)| DatasetError::Csv {
        path: csv_path.clone(),
        line,
        message,
    })?;
    let Some((_, header)) = records.first() else {
        return Err(DatasetError::Invalid {
            path: csv_path,
            message: "empty CSV file (no header)".into(),
        });
    };
    let header_names: Vec<String> = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let mut column = [0usize; 5];
    for (slot, wanted) in column.iter_mut().zip(VISA_COLUMNS) {
        *slot = header_names
            .iter()
            .position(|h| h == wanted)
            .ok_or_else(|| DatasetError::MissingColumn {
                path: csv_path.clone(),
                column: wanted.to_string(),
                header: header.join(","),
            })?;
    }
    let [c_object, c_split, c_label, c_image, c_mask] = column;
    let needed = column.iter().max().copied().unwrap_or(0) + 1;

    let mut categories: Vec<Category> = Vec::new();
    for (line, fields) in &records[1..] {
        let line = *line;
        let csv_err = |message: String| DatasetError::Csv {
            path: csv_path.clone(),
            line,
            message,
        };
        if fields.len() < needed {
            return Err(csv_err(format!(
                "{} fields, expected {}",
                fields.len(),
                header.len()
            )));
        }
        let object = fields[c_object].trim();
        if object.is_empty() {
            return Err(csv_err("empty object".into()));
        }
        let split = fields[c_split].trim().to_ascii_lowercase();
        let label = fields[c_label].trim().to_ascii_lowercase();
        let anomalous = match label.as_str() {
            "normal" => false,
            "anomaly" => true,
            other => {
                return Err(csv_err(format!(
                    "label '{other}' (expected normal or anomaly)"
                )))
            }
        };
        let listed = |rel: &str| -> Result<PathBuf> {
            let path = root.join(rel);
            if path.is_file() {
                Ok(path)
            } else {
                Err(DatasetError::MissingListedFile {
                    path,
                    csv: csv_path.clone(),
                    line,
                })
            }
        };
        let image_rel = fields[c_image].trim();
        if image_rel.is_empty() {
            return Err(csv_err("empty image path".into()));
        }
        let index = match categories.iter().position(|c| c.name == object) {
            Some(i) => i,
            None => {
                categories.push(Category {
                    name: object.to_string(),
                    train: Vec::new(),
                    validation: Vec::new(),
                    test: Vec::new(),
                });
                categories.len() - 1
            }
        };
        let category = &mut categories[index];
        match split.as_str() {
            "train" => {
                if !anomalous {
                    category.train.push(listed(image_rel)?);
                }
            }
            "test" => {
                let path = listed(image_rel)?;
                let mask_rel = fields[c_mask].trim();
                let masks = if mask_rel.is_empty() {
                    Vec::new()
                } else {
                    vec![listed(mask_rel)?]
                };
                let defect = if anomalous { "anomaly" } else { "good" }.to_string();
                category.test.push(Sample {
                    path,
                    anomalous,
                    defect,
                    split: None,
                    masks,
                    subtype: None,
                });
            }
            other => return Err(csv_err(format!("split '{other}' (expected train or test)"))),
        }
    }
    if categories.is_empty() {
        return Err(DatasetError::Invalid {
            path: csv_path,
            message: "no rows".into(),
        });
    }
    for category in &mut categories {
        if category.train.is_empty() {
            return Err(DatasetError::Invalid {
                path: csv_path.clone(),
                message: format!("object '{}' has no normal train rows", category.name),
            });
        }
        category.train.sort();
        category.test.sort_by(|a, b| a.path.cmp(&b.path));
    }
    categories.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(categories)
}

/// CSV records, each with the (1-based) line it starts on.
pub(crate) type CsvRecords = Vec<(usize, Vec<String>)>;

/// Parses CSV text (RFC 4180: `,` separators, `"` quoting with `""` as an escaped quote,
/// quoted fields may hold separators and line breaks; LF or CRLF line ends; a UTF-8 BOM is
/// skipped; blank lines are skipped). Returns each record with the line it starts on
/// (1-based), or the line and message of the first error.
pub(crate) fn parse_csv(text: &str) -> std::result::Result<CsvRecords, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut chars = text.chars().peekable();
    // State: at the start of a field (`fresh`), inside quotes, or after a closing quote.
    let mut fresh = true;
    let mut quoted = false;
    let mut after_quote = false;
    let mut quote_line = 0usize;

    let end_record = |fields: &mut Vec<String>,
                      field: &mut String,
                      records: &mut Vec<(usize, Vec<String>)>,
                      at: usize| {
        fields.push(std::mem::take(field));
        let record = std::mem::take(fields);
        if !(record.len() == 1 && record[0].is_empty()) {
            records.push((at, record));
        }
    };

    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                fresh = true;
                after_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_record(&mut fields, &mut field, &mut records, record_line);
                line += 1;
                record_line = line;
                fresh = true;
                after_quote = false;
            }
            '"' if fresh => {
                quoted = true;
                quote_line = line;
                fresh = false;
            }
            _ if after_quote => {
                return Err((
                    line,
                    format!("unexpected character {c:?} after a closing quote"),
                ));
            }
            _ => {
                field.push(c);
                fresh = false;
            }
        }
    }
    if quoted {
        return Err((quote_line, "unterminated quoted field".into()));
    }
    if !fields.is_empty() || !field.is_empty() || after_quote {
        end_record(&mut fields, &mut field, &mut records, record_line);
    }
    Ok(records)
}

// --- Plain

struct PlainRoot {
    name: String,
    good: PathBuf,
    defects: Vec<(String, PathBuf)>,
}

/// A plain root `dir` (good folder + at least one other image folder), if it is one.
fn plain_root(name: String, dir: &Path, good_folder: Option<&str>) -> Result<Option<PlainRoot>> {
    let dirs = sub_dirs(dir)?;
    let good = match good_folder {
        Some(wanted) => dirs.iter().find(|(n, _)| n.eq_ignore_ascii_case(wanted)),
        None => PLAIN_GOOD_FOLDERS
            .iter()
            .find_map(|wanted| dirs.iter().find(|(n, _)| n.eq_ignore_ascii_case(wanted))),
    };
    let Some((good_name, good)) = good else {
        return Ok(None);
    };
    let mut defects = Vec::new();
    for (n, d) in &dirs {
        if n != good_name && has_images(d)? {
            defects.push((n.clone(), d.clone()));
        }
    }
    if defects.is_empty() {
        return Ok(None);
    }
    Ok(Some(PlainRoot {
        name,
        good: good.clone(),
        defects,
    }))
}

/// The root itself as a plain root, or else its sub-folders if every one is a plain root.
fn plain_roots(root: &Path, good_folder: Option<&str>) -> Result<Vec<PlainRoot>> {
    if let Some(one) = plain_root(folder_name(root), root, good_folder)? {
        return Ok(vec![one]);
    }
    let dirs = sub_dirs(root)?;
    if dirs.is_empty() {
        return Ok(Vec::new());
    }
    let mut roots = Vec::new();
    for (name, dir) in dirs {
        match plain_root(name, &dir, good_folder)? {
            Some(r) => roots.push(r),
            None => return Ok(Vec::new()),
        }
    }
    Ok(roots)
}

fn plain_missing(root: &Path, good_folder: Option<&str>) -> DatasetError {
    let good = match good_folder {
        Some(g) => format!("'{g}'"),
        None => PLAIN_GOOD_FOLDERS.join(", "),
    };
    DatasetError::Missing {
        path: root.to_path_buf(),
        what: format!(
            "plain dataset: looked for a good folder ({good}) next to at least one other folder \
             of images, in the folder or in each of its sub-folders"
        ),
    }
}

fn load_plain_category(root: PlainRoot) -> Result<Category> {
    let good = images_in(&root.good)?;
    if good.is_empty() {
        return Err(DatasetError::Invalid {
            path: root.good,
            message: "no images in the good folder".into(),
        });
    }
    let n_train = good.len().div_ceil(2);
    let train = good[..n_train].to_vec();
    let mut test: Vec<Sample> = good[n_train..]
        .iter()
        .map(|path| Sample {
            path: path.clone(),
            anomalous: false,
            defect: "good".into(),
            split: None,
            masks: Vec::new(),
            subtype: None,
        })
        .collect();
    for (defect, dir) in &root.defects {
        for path in images_in(dir)? {
            test.push(Sample {
                path,
                anomalous: true,
                defect: defect.clone(),
                split: None,
                masks: Vec::new(),
                subtype: None,
            });
        }
    }
    test.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Category {
        name: root.name,
        train,
        validation: Vec::new(),
        test,
    })
}

// ---------------------------------------------------------------------------------------
// Protocol

/// Chooses the reference images and the validation images of a category.
///
/// Validation: `category.validation` if non-empty (MVTec LOCO); else the last
/// `protocol.validation_count` training images (sorted), which are then removed from the
/// reference pool. At least 2 validation images and at least 1 reference image must result.
///
/// References: full data (`shots: None`) → the whole pool; `shots: Some(k)` → the first `k`
/// of the sorted pool, or with a seed `k` drawn without replacement by
/// `StdRng::seed_from_u64(seed)` and then sorted. `k` must be in `1..=pool size`.
pub fn references_and_validation(
    category: &Category,
    protocol: &Protocol,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DatasetError> {
    let err = |message: String| DatasetError::Protocol {
        category: category.name.clone(),
        message,
    };
    let mut train = category.train.clone();
    train.sort();
    let (pool, validation) = if !category.validation.is_empty() {
        let mut validation = category.validation.clone();
        validation.sort();
        if validation.len() < 2 {
            return Err(err(format!(
                "the validation split has {} image(s), at least 2 are needed",
                validation.len()
            )));
        }
        (train, validation)
    } else {
        let v = protocol.validation_count;
        if v < 2 {
            return Err(err(format!(
                "validation count {v} is too small, at least 2 are needed"
            )));
        }
        if train.len() <= v {
            return Err(err(format!(
                "{} training image(s): taking the last {v} for validation leaves none for references",
                train.len()
            )));
        }
        let validation = train.split_off(train.len() - v);
        (train, validation)
    };
    if pool.is_empty() {
        return Err(err("no training images for references".into()));
    }
    let references = match protocol.shots {
        None => pool,
        Some(0) => return Err(err("0-shot: at least 1 reference image is needed".into())),
        Some(k) if k > pool.len() => {
            let note = if category.validation.is_empty() {
                format!(
                    " ({} training images minus {} for validation)",
                    category.train.len(),
                    protocol.validation_count
                )
            } else {
                String::new()
            };
            return Err(err(format!(
                "{k}-shot needs {k} reference images but only {} are available{note}",
                pool.len()
            )));
        }
        Some(k) => match protocol.seed {
            None => pool[..k].to_vec(),
            Some(seed) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut picked: Vec<PathBuf> = rand::seq::index::sample(&mut rng, pool.len(), k)
                    .into_iter()
                    .map(|i| pool[i].clone())
                    .collect();
                picked.sort();
                picked
            }
        },
    };
    Ok((references, validation))
}

// ---------------------------------------------------------------------------------------
// Miniature datasets for tests

/// Miniature datasets in each layout, for tests (also end-to-end ones).
///
/// All images are 32x32 RGB: good ones a near-uniform grey texture, defective ones the same
/// with bright 8x8 square(s); masks (8-bit grey PNG, 255 = anomalous) mark the squares.
///
/// * MVTec AD: categories `tile` and `wood`, each with [`TRAIN`] train images
///   (`000.png`…), test `good` ×2, `crack` ×2, `hole` ×1 with `ground_truth/<type>/<stem>_mask.png`,
///   and a `license.txt` in the root.
/// * MVTec LOCO: category `breakfast_box` with [`TRAIN`] train images, [`LOCO_VALIDATION`]
///   validation images, test `good` ×2, `logical_anomalies` ×2 (two squares, two masks
///   each in `ground_truth/logical_anomalies/<stem>/000.png, 001.png`), `structural_anomalies`
///   ×2 (one mask each), and a `readme.txt` in the root.
/// * VisA: objects `pcb1` and `candle` (listed in that order in the CSV) with
///   [`VISA_TRAIN`] normal train rows (`Data/Images/Normal/0000.JPG`…), 2 normal test rows
///   (the next numbers) and 3 anomaly test rows (`Data/Images/Anomaly/000.JPG`… with
///   `Data/Masks/Anomaly/000.png`…); JPEG images as in the distribution.
/// * Plain: `good` ×[`TRAIN`], `scratch` ×2, `stain` ×2 (so [`TRAIN`]`/2` train images).
#[doc(hidden)]
pub mod testing {
    use super::Layout;
    use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};
    use std::fs;
    use std::io;
    use std::path::Path;

    pub const TRAIN: usize = 8;
    pub const LOCO_VALIDATION: usize = 3;
    pub const VISA_TRAIN: usize = 6;
    pub const SIZE: u32 = 32;
    pub const SQUARE: u32 = 8;

    fn noise(x: u32, y: u32, seed: u32) -> i32 {
        let mut h = x.wrapping_mul(0x9E37_79B1)
            ^ y.wrapping_mul(0x85EB_CA77)
            ^ seed.wrapping_mul(0xC2B2_AE3D);
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        h ^= h >> 12;
        (h % 13) as i32 - 6
    }

    /// Top-left corners of the squares of defective image `index`.
    fn squares(index: u32, count: u32) -> Vec<(u32, u32)> {
        (0..count)
            .map(|j| {
                let k = index * 3 + j * 5;
                (
                    2 + (k * 7) % (SIZE - SQUARE - 3),
                    2 + (k * 11 + j * 13) % (SIZE - SQUARE - 3),
                )
            })
            .collect()
    }

    /// A good image (`squares` empty) or a defective one with bright squares.
    pub fn image(seed: u32, squares: &[(u32, u32)]) -> RgbImage {
        RgbImage::from_fn(SIZE, SIZE, |x, y| {
            if squares
                .iter()
                .any(|&(sx, sy)| (sx..sx + SQUARE).contains(&x) && (sy..sy + SQUARE).contains(&y))
            {
                return Rgb([250, 250, 245]);
            }
            let n = noise(x, y, seed);
            Rgb([(120 + n) as u8, (112 + n) as u8, (104 + n) as u8])
        })
    }

    /// A mask marking the given squares.
    pub fn mask(squares: &[(u32, u32)]) -> GrayImage {
        GrayImage::from_fn(SIZE, SIZE, |x, y| {
            let inside = squares
                .iter()
                .any(|&(sx, sy)| (sx..sx + SQUARE).contains(&x) && (sy..sy + SQUARE).contains(&y));
            Luma([if inside { 255 } else { 0 }])
        })
    }

    fn save_rgb(img: &RgbImage, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("png")
            .to_ascii_lowercase();
        let format = if ext == "jpg" || ext == "jpeg" {
            ImageFormat::Jpeg
        } else {
            ImageFormat::Png
        };
        img.save_with_format(path, format).map_err(io::Error::other)
    }

    fn save_mask(img: &GrayImage, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        img.save_with_format(path, ImageFormat::Png)
            .map_err(io::Error::other)
    }

    fn good_images(
        dir: &Path,
        names: impl IntoIterator<Item = String>,
        seed: u32,
    ) -> io::Result<()> {
        for (i, name) in names.into_iter().enumerate() {
            save_rgb(&image(seed + i as u32, &[]), &dir.join(name))?;
        }
        Ok(())
    }

    /// Writes a miniature dataset of `layout` into `root` (created if needed).
    pub fn write_miniature(root: &Path, layout: Layout) -> io::Result<()> {
        fs::create_dir_all(root)?;
        match layout {
            Layout::MvtecAd => {
                fs::write(root.join("license.txt"), "miniature test data\n")?;
                for (c, cat) in ["tile", "wood"].into_iter().enumerate() {
                    let dir = root.join(cat);
                    let seed = 1000 * (c as u32 + 1);
                    good_images(
                        &dir.join("train/good"),
                        (0..TRAIN).map(|i| format!("{i:03}.png")),
                        seed,
                    )?;
                    good_images(
                        &dir.join("test/good"),
                        (0..2).map(|i| format!("{i:03}.png")),
                        seed + 100,
                    )?;
                    for (kind, count) in [("crack", 2u32), ("hole", 1)] {
                        for i in 0..count {
                            let sq = squares(i + count, 1);
                            save_rgb(
                                &image(seed + 200 + i, &sq),
                                &dir.join(format!("test/{kind}/{i:03}.png")),
                            )?;
                            save_mask(
                                &mask(&sq),
                                &dir.join(format!("ground_truth/{kind}/{i:03}_mask.png")),
                            )?;
                        }
                    }
                }
            }
            Layout::MvtecLoco => {
                fs::write(root.join("readme.txt"), "miniature test data\n")?;
                let dir = root.join("breakfast_box");
                good_images(
                    &dir.join("train/good"),
                    (0..TRAIN).map(|i| format!("{i:03}.png")),
                    1,
                )?;
                good_images(
                    &dir.join("validation/good"),
                    (0..LOCO_VALIDATION).map(|i| format!("{i:03}.png")),
                    50,
                )?;
                good_images(
                    &dir.join("test/good"),
                    (0..2).map(|i| format!("{i:03}.png")),
                    100,
                )?;
                for (kind, squares_per_image) in
                    [("logical_anomalies", 2u32), ("structural_anomalies", 1)]
                {
                    for i in 0..2u32 {
                        let sq = squares(i + squares_per_image * 10, squares_per_image);
                        save_rgb(
                            &image(200 + i, &sq),
                            &dir.join(format!("test/{kind}/{i:03}.png")),
                        )?;
                        for (j, s) in sq.iter().enumerate() {
                            save_mask(
                                &mask(&[*s]),
                                &dir.join(format!("ground_truth/{kind}/{i:03}/{j:03}.png")),
                            )?;
                        }
                    }
                }
            }
            Layout::Visa => {
                let mut csv = String::from("object,split,label,image,mask\n");
                for (c, object) in ["pcb1", "candle"].into_iter().enumerate() {
                    let seed = 1000 * (c as u32 + 1);
                    // Normal images: first VISA_TRAIN are train, the next 2 test; listed
                    // test-first and in reverse so that the loader has to sort.
                    for i in (0..VISA_TRAIN + 2).rev() {
                        let rel = format!("{object}/Data/Images/Normal/{i:04}.JPG");
                        save_rgb(&image(seed + i as u32, &[]), &root.join(&rel))?;
                        let split = if i < VISA_TRAIN { "train" } else { "test" };
                        csv.push_str(&format!("{object},{split},normal,{rel},\n"));
                    }
                    for i in 0..3u32 {
                        let sq = squares(i, 1);
                        let rel = format!("{object}/Data/Images/Anomaly/{i:03}.JPG");
                        let mask_rel = format!("{object}/Data/Masks/Anomaly/{i:03}.png");
                        save_rgb(&image(seed + 500 + i, &sq), &root.join(&rel))?;
                        save_mask(&mask(&sq), &root.join(&mask_rel))?;
                        csv.push_str(&format!("{object},test,anomaly,{rel},{mask_rel}\n"));
                    }
                }
                fs::create_dir_all(root.join("split_csv"))?;
                fs::write(root.join(super::VISA_CSV), csv)?;
            }
            Layout::Plain => {
                good_images(
                    &root.join("good"),
                    (0..TRAIN).map(|i| format!("{i:03}.png")),
                    7,
                )?;
                for (d, kind) in ["scratch", "stain"].into_iter().enumerate() {
                    for i in 0..2u32 {
                        let sq = squares(i + 4 * d as u32, 1);
                        save_rgb(
                            &image(300 + i, &sq),
                            &root.join(format!("{kind}/{i:03}.png")),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::testing::write_miniature;
    use super::*;

    fn names(paths: &[PathBuf], root: &Path) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn category(train: usize, validation: usize) -> Category {
        Category {
            name: "c".into(),
            train: (0..train)
                .map(|i| PathBuf::from(format!("t/{i:03}.png")))
                .collect(),
            validation: (0..validation)
                .map(|i| PathBuf::from(format!("v/{i:03}.png")))
                .collect(),
            test: Vec::new(),
        }
    }

    #[test]
    fn layout_names_round_trip() {
        for layout in Layout::ALL {
            assert_eq!(layout.to_string().parse::<Layout>().unwrap(), layout);
            assert_eq!(
                serde_json::to_string(&layout).unwrap(),
                format!("\"{layout}\"")
            );
        }
        assert_eq!("MVTEC-AD".parse::<Layout>().unwrap(), Layout::MvtecAd);
        let err = "mvtec".parse::<Layout>().unwrap_err().to_string();
        assert!(
            err.contains("'mvtec'") && err.contains("mvtec-loco"),
            "{err}"
        );
        assert_eq!(Split::Logical.to_string(), "logical");
        assert_eq!(
            serde_json::to_string(&Split::Structural).unwrap(),
            "\"structural\""
        );
    }

    #[test]
    fn image_extensions() {
        for ok in ["a.png", "a.JPG", "a.jpeg", "a.Bmp", "a.tif", "a.TIFF"] {
            assert!(is_image_path(Path::new(ok)), "{ok}");
        }
        for no in ["a.txt", "a", "a.png.bak", "a.gif"] {
            assert!(!is_image_path(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn csv_quoting() {
        let text =
            "\u{feff}a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\"\r\n\r\n2,\"multi\nline\",\n3,,\"\"\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(
            rows,
            vec![
                (1, vec!["a".to_string(), "b".into(), "c".into()]),
                (2, vec!["1".into(), "x, y".into(), "say \"hi\"".into()]),
                (4, vec!["2".into(), "multi\nline".into(), "".into()]),
                (6, vec!["3".into(), "".into(), "".into()]),
            ]
        );
        // No trailing newline.
        assert_eq!(
            parse_csv("a,b").unwrap(),
            vec![(1, vec!["a".to_string(), "b".into()])]
        );
        assert_eq!(
            parse_csv("a,\"\"").unwrap(),
            vec![(1, vec!["a".to_string(), "".into()])]
        );
        assert_eq!(parse_csv("x\n\"open\n").unwrap_err().0, 2);
        let (line, msg) = parse_csv("a\n\"q\"x,b\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("closing quote"), "{msg}");
    }

    #[test]
    fn protocol_full_and_validation_tail() {
        let c = category(30, 0);
        let (refs, val) = references_and_validation(&c, &Protocol::default()).unwrap();
        assert_eq!(refs, c.train[..10].to_vec());
        assert_eq!(val, c.train[10..].to_vec());
    }

    #[test]
    fn protocol_given_validation() {
        let c = category(5, 3);
        let p = Protocol {
            shots: None,
            seed: None,
            validation_count: 20,
        };
        let (refs, val) = references_and_validation(&c, &p).unwrap();
        assert_eq!(refs, c.train);
        assert_eq!(val, c.validation);
        let err = references_and_validation(&category(5, 1), &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("validation split has 1"), "{err}");
    }

    #[test]
    fn protocol_k_shot_first_and_seeded() {
        let c = category(12, 0);
        let p = Protocol {
            shots: Some(3),
            seed: None,
            validation_count: 4,
        };
        let (refs, val) = references_and_validation(&c, &p).unwrap();
        assert_eq!(refs, c.train[..3].to_vec());
        assert_eq!(val, c.train[8..].to_vec());

        let seeded = Protocol { seed: Some(7), ..p };
        let (a, _) = references_and_validation(&c, &seeded).unwrap();
        let (b, _) = references_and_validation(&c, &seeded).unwrap();
        assert_eq!(a, b, "same seed, same draw");
        assert_eq!(a.len(), 3);
        assert!(
            a.windows(2).all(|w| w[0] < w[1]),
            "sorted and distinct: {a:?}"
        );
        assert!(
            a.iter().all(|p| c.train[..8].contains(p)),
            "drawn from the pool only: {a:?}"
        );
        // Some seed gives a draw that differs from the first-k rule.
        let differs = (0..20u64).any(|s| {
            references_and_validation(&c, &Protocol { seed: Some(s), ..p })
                .unwrap()
                .0
                != c.train[..3].to_vec()
        });
        assert!(differs);
        // k equal to the pool is the whole pool whatever the seed.
        let all = Protocol {
            shots: Some(8),
            seed: Some(3),
            validation_count: 4,
        };
        assert_eq!(
            references_and_validation(&c, &all).unwrap().0,
            c.train[..8].to_vec()
        );
    }

    #[test]
    fn protocol_errors() {
        let c = category(12, 0);
        let too_many = Protocol {
            shots: Some(9),
            seed: None,
            validation_count: 4,
        };
        let err = references_and_validation(&c, &too_many)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "category 'c': 9-shot needs 9 reference images but only 8 are available \
             (12 training images minus 4 for validation)"
        );
        let zero = Protocol {
            shots: Some(0),
            ..Protocol::default()
        };
        assert!(references_and_validation(&category(30, 0), &zero)
            .unwrap_err()
            .to_string()
            .contains("0-shot"));
        let err = references_and_validation(&category(20, 0), &Protocol::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("20 training image(s)") && err.contains("none for references"),
            "{err}"
        );
        let one = Protocol {
            validation_count: 1,
            ..Protocol::default()
        };
        assert!(references_and_validation(&c, &one)
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }

    #[test]
    fn mvtec_ad_miniature() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_miniature(root, Layout::MvtecAd).unwrap();
        assert_eq!(detect_layout(root).unwrap(), Layout::MvtecAd);
        let ds = load(root, None, &LoadOptions::default()).unwrap();
        assert_eq!(ds.layout, Layout::MvtecAd);
        let cats: Vec<&str> = ds.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cats, ["tile", "wood"]);
        let tile = &ds.categories[0];
        assert_eq!(tile.train.len(), testing::TRAIN);
        assert!(tile.validation.is_empty());
        let test: Vec<(String, bool, &str, usize)> = tile
            .test
            .iter()
            .map(|s| {
                (
                    names(std::slice::from_ref(&s.path), root)[0].clone(),
                    s.anomalous,
                    s.defect.as_str(),
                    s.masks.len(),
                )
            })
            .collect();
        assert_eq!(
            test,
            vec![
                ("tile/test/crack/000.png".to_string(), true, "crack", 1),
                ("tile/test/crack/001.png".to_string(), true, "crack", 1),
                ("tile/test/good/000.png".to_string(), false, "good", 0),
                ("tile/test/good/001.png".to_string(), false, "good", 0),
                ("tile/test/hole/000.png".to_string(), true, "hole", 1),
            ]
        );
        assert_eq!(
            names(&tile.test[4].masks, root),
            ["tile/ground_truth/hole/000_mask.png"]
        );
    }

    /// `mask` with every non-zero pixel set to `value`.
    fn recolour(path: &Path, value: u8) {
        let mut mask = image::open(path).unwrap().into_luma8();
        assert!(
            mask.pixels().any(|p| p.0[0] != 0),
            "{} empty",
            path.display()
        );
        for p in mask.pixels_mut() {
            if p.0[0] != 0 {
                p.0[0] = value;
            }
        }
        mask.save(path).unwrap();
    }

    fn subtypes(c: &Category, root: &Path) -> Vec<(String, Option<String>)> {
        c.test
            .iter()
            .map(|s| {
                (
                    names(std::slice::from_ref(&s.path), root)[0].clone(),
                    s.subtype.clone(),
                )
            })
            .collect()
    }

    fn owned(rows: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        rows.iter()
            .map(|(p, t)| (p.to_string(), t.map(str::to_string)))
            .collect()
    }

    #[test]
    fn masks_subtype_by_pixel_value() {
        let names = BTreeMap::from([(255u8, "missing".to_string()), (200, "extra".to_string())]);
        let mask = |values: &[u8]| GrayImage::from_raw(values.len() as u32, 1, values.to_vec());
        // Most frequent known value: 200 (3 pixels) over 255 (2); 9 is unknown however frequent.
        let a = mask(&[0, 255, 255, 200, 200, 200, 9, 9, 9, 9]).unwrap();
        assert_eq!(
            masks_subtype(std::slice::from_ref(&a), &names).as_deref(),
            Some("extra")
        );
        // Two masks, two names: sorted and joined; a repeated name once.
        let b = mask(&[0, 0, 255, 0]).unwrap();
        assert_eq!(
            masks_subtype(&[b.clone(), a.clone(), b.clone()], &names).as_deref(),
            Some("extra+missing")
        );
        // A tie goes to the smaller value.
        let tie = mask(&[255, 200]).unwrap();
        assert_eq!(masks_subtype(&[tie], &names).as_deref(), Some("extra"));
        // Only zero or unknown values, or no masks: none.
        let none = mask(&[0, 9, 0]).unwrap();
        assert_eq!(masks_subtype(&[none], &names), None);
        assert_eq!(masks_subtype(&[], &names), None);
    }

    /// MVTec LOCO: `defects_config.json` names pixel values; each image's masks carry them.
    /// `logic.json` fills in only what the masks leave unnamed.
    #[test]
    fn loco_subtypes_from_defects_config() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_miniature(root, Layout::MvtecLoco).unwrap();
        let cat = root.join("breakfast_box");
        let gt = cat.join("ground_truth");
        fs::write(
            cat.join(DEFECTS_CONFIG),
            r#"[
  {"defect_name": "missing_almonds", "pixel_value": 255, "saturation_threshold": 2500,
   "relative_saturation": false},
  {"defect_name": "extra_banana", "pixel_value": 200, "saturation_threshold": 1.0,
   "relative_saturation": true},
  {"defect_name": "box_damaged", "pixel_value": 100, "saturation_threshold": 1.0,
   "relative_saturation": true}
]"#,
        )
        .unwrap();
        // logical 000: masks 255 and 200; logical 001: both 200; structural 000: 100;
        // structural 001: an unknown value, named by logic.json instead.
        recolour(&gt.join("logical_anomalies/000/001.png"), 200);
        recolour(&gt.join("logical_anomalies/001/000.png"), 200);
        recolour(&gt.join("logical_anomalies/001/001.png"), 200);
        recolour(&gt.join("structural_anomalies/000/000.png"), 100);
        recolour(&gt.join("structural_anomalies/001/000.png"), 7);
        let ds = load(root, None, &LoadOptions::default()).unwrap();
        let expected = [
            ("breakfast_box/test/good/000.png", None),
            ("breakfast_box/test/good/001.png", None),
            (
                "breakfast_box/test/logical_anomalies/000.png",
                Some("extra_banana+missing_almonds"),
            ),
            (
                "breakfast_box/test/logical_anomalies/001.png",
                Some("extra_banana"),
            ),
            (
                "breakfast_box/test/structural_anomalies/000.png",
                Some("box_damaged"),
            ),
            ("breakfast_box/test/structural_anomalies/001.png", None),
        ];
        assert_eq!(subtypes(&ds.categories[0], root), owned(&expected));

        fs::write(
            cat.join(LOGIC_KEY),
            r#"{"category": "breakfast_box", "test": [
  {"image": "test/logical_anomalies/000.png", "anomaly": "ignored", "broken_rules": []},
  {"image": "test/structural_anomalies/001.png", "anomaly": "dent", "broken_rules": []},
  {"image": "test/good/000.png", "anomaly": "not for a good image"}
]}"#,
        )
        .unwrap();
        let ds = load(root, None, &LoadOptions::default()).unwrap();
        let mut expected = expected;
        expected[5].1 = Some("dent");
        assert_eq!(subtypes(&ds.categories[0], root), owned(&expected));

        fs::write(
            cat.join(DEFECTS_CONFIG),
            r#"[{"defect_name": "x", "pixel_value": 300}]"#,
        )
        .unwrap();
        let err = load(root, None, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("defects_config.json") && err.contains("pixel_value"),
            "{err}"
        );
    }

    #[test]
    fn a_pixel_value_shared_by_two_defects_names_neither() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFECTS_CONFIG);
        fs::write(
            &path,
            r#"[{"defect_name": "missing", "pixel_value": 255},
                {"defect_name": "extra", "pixel_value": 255},
                {"defect_name": "scratch", "pixel_value": 100},
                {"defect_name": "scratch", "pixel_value": 100}]"#,
        )
        .unwrap();
        let names = read_defects_config(&path).unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names[&100], "scratch");
    }

    /// Synthetic scenes: no `defects_config.json`; `logic.json`'s `anomaly` is the subtype.
    #[test]
    fn loco_subtypes_from_logic_json() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_miniature(root, Layout::MvtecLoco).unwrap();
        let cat = root.join("breakfast_box");
        let entry = |image: &str, anomaly: Option<&str>| serde_json::json!({"image": image, "anomaly": anomaly, "broken_rules": []});
        let key = serde_json::json!({
            "category": "tray",
            "rules": ["pin_count"],
            "test": [
                entry("test/good/000.png", None),
                entry("test/logical_anomalies/000.png", Some("missing_pin")),
                entry("test/logical_anomalies/001.png", Some("extra_pin")),
                entry("test/structural_anomalies/000.png", None),
                {"image": 3},
            ]
        });
        fs::write(cat.join(LOGIC_KEY), key.to_string()).unwrap();
        let ds = load(root, None, &LoadOptions::default()).unwrap();
        assert_eq!(
            subtypes(&ds.categories[0], root),
            owned(&[
                ("breakfast_box/test/good/000.png", None),
                ("breakfast_box/test/good/001.png", None),
                (
                    "breakfast_box/test/logical_anomalies/000.png",
                    Some("missing_pin")
                ),
                (
                    "breakfast_box/test/logical_anomalies/001.png",
                    Some("extra_pin")
                ),
                ("breakfast_box/test/structural_anomalies/000.png", None),
                ("breakfast_box/test/structural_anomalies/001.png", None),
            ])
        );
        // Without either file, no subtypes; a broken key is an error naming it.
        fs::write(cat.join(LOGIC_KEY), "{\"rules\": []}").unwrap();
        let err = load(root, None, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("logic.json") && err.contains("`test` list"),
            "{err}"
        );
        fs::remove_file(cat.join(LOGIC_KEY)).unwrap();
        let ds = load(root, None, &LoadOptions::default()).unwrap();
        assert!(ds.categories[0].test.iter().all(|s| s.subtype.is_none()));
    }

    #[test]
    fn plain_half_split() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fabric");
        write_miniature(&root, Layout::Plain).unwrap();
        let ds = load(&root, None, &LoadOptions::default()).unwrap();
        assert_eq!(ds.layout, Layout::Plain);
        let c = &ds.categories[0];
        assert_eq!(c.name, "fabric");
        assert_eq!(
            names(&c.train, &root),
            [
                "good/000.png",
                "good/001.png",
                "good/002.png",
                "good/003.png"
            ]
        );
        assert_eq!(c.test.len(), 8);
    }
}
