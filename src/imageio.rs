//! The one image loader of the `logsad` command, enrollment and evaluation, GStreamer-free.
//!
//! * The format is read from the file's first bytes, never from its name: a JPEG saved as
//!   `.png` decodes as a JPEG. PNG, JPEG, BMP and TIFF are read.
//! * The EXIF orientation (all 8 values; JPEG APP1, PNG eXIf, TIFF tag 274) is applied, so the
//!   pixels come out as a viewer shows them: a phone photo tagged "rotate 90 degrees clockwise"
//!   (orientation 6) is returned rotated.
//! * A file cut short is refused: a JPEG must reach its end-of-image marker and a PNG its IEND
//!   chunk (the JPEG decoder itself fills a cut-off scan with grey and reports nothing); BMP and
//!   TIFF rely on their decoders, which fail on missing data.
//!
//! * Only regular files are read (after following links): a named pipe, socket, device or
//!   folder, a dangling link or a link loop is refused without blocking
//!   ([`LoadError::NotAFile`]).
//!
//! Every error names the file and its cause as a [`LoadError`].

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::detect::preprocess::RgbImage;

/// Formats decoded (the `image` features this crate enables).
pub const FORMATS: [ImageFormat; 4] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
];

/// Why an image file could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a regular file once links are followed: a named pipe (never opened for reading, so
    /// it cannot block), a socket, a device, a folder, a dangling link or a link loop.
    #[error("{}: not an image file: {what}", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    /// The file has 0 bytes.
    #[error("{}: empty file (0 bytes)", path.display())]
    Empty { path: PathBuf },
    /// The first bytes are no image signature known to the loader.
    #[error("{}: not an image: its first bytes ({start}) match no PNG, JPEG, BMP or TIFF \
             signature", path.display())]
    UnknownFormat {
        path: PathBuf,
        /// The first bytes in hex.
        start: String,
    },
    /// A known image format or feature this build does not decode (GIF, WebP, a 12-bit JPEG,
    /// an image over the decoder's memory limit).
    #[error("{}: unsupported: {detail}", path.display())]
    Unsupported { path: PathBuf, detail: String },
    /// The file ends before the image does.
    #[error("{}: truncated {format}: {detail}", path.display())]
    Truncated {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    /// The data breaks the format's rules.
    #[error("{}: corrupt {format}: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
}

impl LoadError {
    /// A short machine-readable name of the cause: `io`, `not-a-file`, `empty`,
    /// `unknown-format`, `unsupported`, `truncated` or `corrupt`.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::NotAFile { .. } => "not-a-file",
            LoadError::Empty { .. } => "empty",
            LoadError::UnknownFormat { .. } => "unknown-format",
            LoadError::Unsupported { .. } => "unsupported",
            LoadError::Truncated { .. } => "truncated",
            LoadError::Corrupt { .. } => "corrupt",
        }
    }

    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::Io { path, .. }
            | LoadError::NotAFile { path, .. }
            | LoadError::Empty { path }
            | LoadError::UnknownFormat { path, .. }
            | LoadError::Unsupported { path, .. }
            | LoadError::Truncated { path, .. }
            | LoadError::Corrupt { path, .. } => path,
        }
    }
}

/// Decodes an image file by its content, with its EXIF orientation applied. The returned image
/// keeps the file's colour type (grey masks stay grey).
///
/// Errors: see [`LoadError`]; a file cut short is [`LoadError::Truncated`].
pub fn load(path: &Path) -> Result<DynamicImage, LoadError> {
    let bytes = read(path)?;
    let format = sniff(path, &bytes)?;
    check_complete(path, format, &bytes)?;
    let mut decoder = decoder(path, format, &bytes)?;
    let orientation = decoder
        .orientation()
        .map_err(|e| decode_error(path, format, e))?;
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, format, e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// [`load`] converted to packed 8-bit RGB (alpha dropped, grey replicated, 16 bits rounded to 8),
/// `width x height x 3` bytes.
pub fn load_rgb(path: &Path) -> Result<RgbImage, LoadError> {
    let rgb = load(path)?.into_rgb8();
    let (width, height) = rgb.dimensions();
    // The decoders refuse images of zero width or height, so this cannot fail on their output.
    RgbImage::new(width, height, rgb.into_raw()).map_err(|detail| LoadError::Corrupt {
        path: path.to_path_buf(),
        format: "image",
        detail,
    })
}

/// Width and height in pixels as [`load`] would return them (swapped by an orientation that
/// turns the image a quarter), read from the header without decoding the pixels.
pub fn dimensions(path: &Path) -> Result<(u32, u32), LoadError> {
    let bytes = read(path)?;
    let format = sniff(path, &bytes)?;
    let mut decoder = decoder(path, format, &bytes)?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .map_err(|e| decode_error(path, format, e))?;
    use image::metadata::Orientation::*;
    Ok(match orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        NoTransforms | Rotate180 | FlipHorizontal | FlipVertical => (w, h),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking, so that opening a named pipe returns at once; the type is then read from
    // the open file, so nothing can swap it in between.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| not_a_file_link(path, &e).unwrap_or_else(|| io_error(e)))?;
    let file_type = file.metadata().map_err(io_error)?.file_type();
    if !file_type.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
            what: file_type_name(file_type),
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// What a file that is not a regular one is, in words.
fn file_type_name(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// The refusal of a symbolic link that `open` could not follow: its target is missing, or
/// links lead back to it. `None` when `path` is no link or the error is another.
fn not_a_file_link(path: &Path, error: &std::io::Error) -> Option<LoadError> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let what = match error.raw_os_error() {
        _ if !is_link => return None,
        Some(libc::ELOOP) => "a symbolic link loop",
        _ if error.kind() == std::io::ErrorKind::NotFound => {
            "a dangling symbolic link (its target does not exist)"
        }
        _ => return None,
    };
    Some(LoadError::NotAFile {
        path: path.to_path_buf(),
        what,
    })
}

/// The format of the content; the file name plays no part.
fn sniff(path: &Path, bytes: &[u8]) -> Result<ImageFormat, LoadError> {
    match image::guess_format(bytes) {
        Ok(format) if FORMATS.contains(&format) => Ok(format),
        Ok(format) => Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            detail: format!(
                "a {} image; only PNG, JPEG, BMP and TIFF are read",
                format_name(format)
            ),
        }),
        Err(_) => Err(LoadError::UnknownFormat {
            path: path.to_path_buf(),
            start: bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        other => other.extensions_str().first().copied().unwrap_or("image"),
    }
}

fn decoder<'a>(
    path: &Path,
    format: ImageFormat,
    bytes: &'a [u8],
) -> Result<impl ImageDecoder + 'a, LoadError> {
    ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|e| decode_error(path, format, e))
}

/// Sorts a decoder's error into a [`LoadError`]: running out of data is truncation.
fn decode_error(path: &Path, format: ImageFormat, error: ImageError) -> LoadError {
    let path = path.to_path_buf();
    let format_name = format_name(format);
    match error {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            LoadError::Truncated {
                path,
                format: format_name,
                detail: e.to_string(),
            }
        }
        ImageError::Unsupported(e) => LoadError::Unsupported {
            path,
            detail: e.to_string(),
        },
        ImageError::Limits(e) => LoadError::Unsupported {
            path,
            detail: e.to_string(),
        },
        other => LoadError::Corrupt {
            path,
            format: format_name,
            detail: other.to_string(),
        },
    }
}

/// A structural fault found before decoding.
#[derive(Debug, PartialEq)]
enum Fault {
    Truncated(String),
    Corrupt(String),
}

fn check_complete(path: &Path, format: ImageFormat, bytes: &[u8]) -> Result<(), LoadError> {
    let fault = match format {
        ImageFormat::Jpeg => jpeg_fault(bytes),
        ImageFormat::Png => png_fault(bytes),
        _ => None,
    };
    let format = format_name(format);
    match fault {
        None => Ok(()),
        Some(Fault::Truncated(detail)) => Err(LoadError::Truncated {
            path: path.to_path_buf(),
            format,
            detail,
        }),
        Some(Fault::Corrupt(detail)) => Err(LoadError::Corrupt {
            path: path.to_path_buf(),
            format,
            detail,
        }),
    }
}

const JPEG_EOI: u8 = 0xd9;
const JPEG_SOS: u8 = 0xda;

/// Walks a JPEG's segments from SOI to EOI, skipping each segment by its length and each scan's
/// entropy-coded data up to the next marker (in which a 0xFF byte is followed by 0x00 or a
/// restart marker). `None` when EOI is reached; bytes after it are allowed, and so are stray
/// bytes between segments (decoders skip them; viewers show such files).
fn jpeg_fault(bytes: &[u8]) -> Option<Fault> {
    let len = bytes.len();
    let cut = |at: &str| {
        Some(Fault::Truncated(format!(
            "the file ends after {len} bytes, {at}, before the end-of-image marker"
        )))
    };
    let mut pos = 2; // after SOI (FF D8), checked by the format sniffing
    loop {
        match bytes[pos..].iter().position(|&b| b == 0xff) {
            None => return cut("between segments"),
            Some(stray) => pos += stray,
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while pos < len && bytes[pos] == 0xff {
            pos += 1;
        }
        if pos >= len {
            return cut("in a marker");
        }
        let marker = bytes[pos];
        pos += 1;
        match marker {
            JPEG_EOI => return None,
            // Standalone markers: TEM and the restart markers carry no length.
            0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        if pos + 2 > len {
            return cut(&format!("in the length of marker 0xFF{marker:02X}"));
        }
        let length = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]) as usize;
        if length < 2 {
            return Some(Fault::Corrupt(format!(
                "marker 0xFF{marker:02X} at byte {} has length {length}",
                pos - 2
            )));
        }
        pos += length;
        if pos > len {
            return cut(&format!("inside segment 0xFF{marker:02X}"));
        }
        if marker == JPEG_SOS {
            // Entropy-coded data up to the next marker that is neither a stuffed 0xFF00 nor a
            // restart marker.
            loop {
                match bytes[pos..].iter().position(|&b| b == 0xff) {
                    None => return cut("inside the scan data"),
                    Some(i) => pos += i,
                }
                match bytes.get(pos + 1) {
                    None => return cut("inside the scan data"),
                    Some(0x00 | 0xd0..=0xd7) => pos += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

const PNG_SIGNATURE_LEN: usize = 8;

/// Walks a PNG's chunks (length, type, data, CRC) up to IEND. `None` when IEND is reached;
/// CRCs are left to the decoder.
fn png_fault(bytes: &[u8]) -> Option<Fault> {
    let len = bytes.len();
    let mut pos = PNG_SIGNATURE_LEN;
    loop {
        if pos + 8 > len {
            return Some(Fault::Truncated(format!(
                "the file ends after {len} bytes, before the IEND chunk"
            )));
        }
        let length = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        let kind = &bytes[pos + 4..pos + 8];
        // 4 length + 4 type + data + 4 CRC; a length over 2^31 - 1 breaks the PNG rules.
        if length > i32::MAX as u32 {
            return Some(Fault::Corrupt(format!(
                "chunk at byte {pos} claims {length} bytes"
            )));
        }
        let end = pos + 12 + length as usize;
        if end > len {
            return Some(Fault::Truncated(format!(
                "the file ends after {len} bytes, inside the {} chunk at byte {pos} ({length} \
                 bytes of data)",
                String::from_utf8_lossy(kind)
            )));
        }
        if kind == b"IEND" {
            return None;
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A 40x24 image with a horizontal and a vertical gradient, so every crop differs.
    fn gradient() -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 24, |x, y| {
            Rgb([(x * 6) as u8, (y * 10) as u8, 128])
        }))
    }

    /// Makes a named pipe at `path`.
    pub(crate) fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        mkfifo(&at("pipe.png"));
        std::os::unix::fs::symlink(at("missing.png"), at("dangling.png")).unwrap();
        std::os::unix::fs::symlink(at("loop-b.png"), at("loop-a.png")).unwrap();
        std::os::unix::fs::symlink(at("loop-a.png"), at("loop-b.png")).unwrap();
        std::fs::create_dir(at("folder.png")).unwrap();
        std::fs::write(at("real.png"), encode(&gradient(), ImageFormat::Png)).unwrap();
        std::os::unix::fs::symlink(at("real.png"), at("link.png")).unwrap();
        for (name, want) in [
            ("pipe.png", "a named pipe (FIFO)"),
            (
                "dangling.png",
                "a dangling symbolic link (its target does not exist)",
            ),
            ("loop-a.png", "a symbolic link loop"),
            ("folder.png", "a folder"),
        ] {
            match load(&at(name)) {
                Err(LoadError::NotAFile { path, what }) => {
                    assert_eq!((path, what), (at(name), want), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // A link to a regular file is followed; a missing file stays an I/O error.
        assert_eq!(load_rgb(&at("link.png")).unwrap().width, 40);
        assert_eq!(load(&at("missing.png")).unwrap_err().kind(), "io");
    }

    #[test]
    fn complete_files_pass_the_structure_checks() {
        let image = gradient();
        assert_eq!(jpeg_fault(&encode(&image, ImageFormat::Jpeg)), None);
        assert_eq!(png_fault(&encode(&image, ImageFormat::Png)), None);
        // Bytes after EOI (some cameras append a trailer) do not matter.
        let mut trailer = encode(&image, ImageFormat::Jpeg);
        trailer.extend_from_slice(b"trailer");
        assert_eq!(jpeg_fault(&trailer), None);
    }

    #[test]
    fn every_cut_of_a_jpeg_or_png_is_truncated() {
        let image = gradient();
        for format in [ImageFormat::Jpeg, ImageFormat::Png] {
            let bytes = encode(&image, format);
            let fault = match format {
                ImageFormat::Jpeg => jpeg_fault,
                _ => png_fault,
            };
            // Every cut after the signature, up to the last byte (JPEG: EOI's second byte).
            for cut in 3..bytes.len() {
                match fault(&bytes[..cut]) {
                    Some(Fault::Truncated(detail)) => {
                        assert!(detail.contains(&format!("after {cut} bytes")), "{detail}")
                    }
                    other => panic!("{format:?} cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn stray_bytes_between_jpeg_segments_are_skipped() {
        let bytes = encode(&gradient(), ImageFormat::Jpeg);
        // The first segment (APP0 or DQT) starts right after SOI.
        let first = 4 + u16::from_be_bytes([bytes[4], bytes[5]]) as usize;
        let mut stray = bytes[..first].to_vec();
        stray.extend_from_slice(&[0, 0, 0]);
        stray.extend_from_slice(&bytes[first..]);
        assert_eq!(jpeg_fault(&stray), None);
    }

    #[test]
    fn a_segment_length_under_2_is_corrupt() {
        let mut bytes = encode(&gradient(), ImageFormat::Jpeg);
        bytes[4..6].copy_from_slice(&[0, 1]);
        let marker = bytes[3];
        assert_eq!(
            jpeg_fault(&bytes),
            Some(Fault::Corrupt(format!(
                "marker 0xFF{marker:02X} at byte 2 has length 1"
            )))
        );
    }

    #[test]
    fn errors_name_the_file_and_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("empty.png", Vec::new(), "empty"),
            ("text.png", b"hello, world".to_vec(), "unknown-format"),
            (
                "anim.png",
                b"GIF89a\x01\x00\x01\x00".to_vec(),
                "unsupported",
            ),
            (
                "cut.jpg",
                encode(&gradient(), ImageFormat::Jpeg)[..200].to_vec(),
                "truncated",
            ),
        ];
        for (name, bytes, kind) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let error = load(&path).unwrap_err();
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.path(), path);
            assert!(error.to_string().starts_with(&path.display().to_string()));
        }
        let missing = dir.path().join("missing.png");
        assert_eq!(load(&missing).unwrap_err().kind(), "io");
        assert_eq!(
            LoadError::UnknownFormat {
                path: "x".into(),
                start: String::new()
            }
            .kind(),
            "unknown-format"
        );
    }

    #[test]
    fn content_decides_the_format_not_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let image = gradient();
        let png_as_jpg = dir.path().join("really-png.jpg");
        std::fs::write(&png_as_jpg, encode(&image, ImageFormat::Png)).unwrap();
        assert_eq!(load(&png_as_jpg).unwrap(), image, "PNG is lossless");
        let bmp_as_tif = dir.path().join("really-bmp.tif");
        std::fs::write(&bmp_as_tif, encode(&image, ImageFormat::Bmp)).unwrap();
        assert_eq!(load(&bmp_as_tif).unwrap(), image, "BMP is lossless");
        assert_eq!(dimensions(&bmp_as_tif).unwrap(), (40, 24));
    }

    #[test]
    fn grey_stays_grey_and_rgb_is_packed() {
        let dir = tempfile::tempdir().unwrap();
        let grey = DynamicImage::ImageLuma8(ImageBuffer::from_fn(3, 2, |x, y| {
            image::Luma([(x + 3 * y) as u8 * 40])
        }));
        let path = dir.path().join("mask.png");
        std::fs::write(&path, encode(&grey, ImageFormat::Png)).unwrap();
        assert_eq!(load(&path).unwrap(), grey);
        let rgb = load_rgb(&path).unwrap();
        assert_eq!((rgb.width, rgb.height), (3, 2));
        assert_eq!(&rgb.pixels[..6], &[0, 0, 0, 40, 40, 40]);
        assert_eq!(rgb.pixels[15..], [200, 200, 200]);
    }
}
