//! Frames to packed RGB for the detector, deinterlacing interlaced ones.

use crate::detect::deinterlace::{self, Field};
use crate::detect::preprocess::RgbImage;
use gst::glib;

/// Converts negotiated frames to packed RGB for the detector, deinterlacing interlaced ones.
pub(super) struct Converter {
    pub(super) in_info: gst_video::VideoInfo,
    rgb_info: gst_video::VideoInfo,
    converter: gst_video::VideoConverter,
    rgb: gst::Buffer,
}

/// The field a bob deinterlace of `buffer` keeps, or `None` when the frame is progressive.
fn field_to_keep(info: &gst_video::VideoInfo, buffer: &gst::BufferRef) -> Option<Field> {
    use gst_video::prelude::*;
    use gst_video::{VideoBufferFlags, VideoFieldOrder, VideoInterlaceMode};
    let flags = buffer.video_flags();
    let interlaced = match info.interlace_mode() {
        VideoInterlaceMode::Interleaved => true,
        VideoInterlaceMode::Mixed => flags.contains(VideoBufferFlags::INTERLACED),
        _ => false,
    };
    if !interlaced {
        return None;
    }
    // The field captured first: the caps' field order, else the buffer's TFF flag.
    Some(match info.field_order() {
        VideoFieldOrder::TopFieldFirst => Field::Top,
        VideoFieldOrder::BottomFieldFirst => Field::Bottom,
        _ if flags.contains(VideoBufferFlags::TFF) => Field::Top,
        _ => Field::Bottom,
    })
}

impl Converter {
    pub(super) fn new(in_info: &gst_video::VideoInfo) -> Result<Self, glib::BoolError> {
        let rgb_info = gst_video::VideoInfo::builder(
            gst_video::VideoFormat::Rgb,
            in_info.width(),
            in_info.height(),
        )
        .fps(in_info.fps())
        .interlace_mode(in_info.interlace_mode())
        .build()?;
        let converter = gst_video::VideoConverter::new(in_info, &rgb_info, None)?;
        let rgb = gst::Buffer::with_size(rgb_info.size())
            .map_err(|_| glib::bool_error!("cannot allocate the RGB frame"))?;
        Ok(Converter {
            in_info: in_info.clone(),
            rgb_info,
            converter,
            rgb,
        })
    }

    /// The frame as packed RGB, and the field kept if it was deinterlaced.
    pub(super) fn convert(
        &mut self,
        buffer: &gst::BufferRef,
    ) -> Result<(RgbImage, Option<Field>), String> {
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &self.in_info)
            .map_err(|_| "cannot map the input frame".to_string())?;
        let rgb = self.rgb.make_mut();
        let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(rgb, &self.rgb_info)
            .map_err(|_| "cannot map the RGB frame".to_string())?;
        self.converter.frame_ref(&src, &mut dst);
        let (w, h) = (
            self.rgb_info.width() as usize,
            self.rgb_info.height() as usize,
        );
        let stride = self.rgb_info.stride()[0] as usize;
        let data = dst.plane_data(0).map_err(|e| e.to_string())?;
        // GStreamer pads RGB rows to 4 bytes; the detector wants them packed.
        let mut pixels = Vec::with_capacity(w * h * 3);
        for row in data.chunks(stride).take(h) {
            pixels.extend_from_slice(&row[..w * 3]);
        }
        let field = field_to_keep(&self.in_info, buffer);
        if let Some(field) = field {
            deinterlace::bob(&mut pixels, w * 3, h, field)?;
        }
        Ok((RgbImage::new(w as u32, h as u32, pixels)?, field))
    }
}
