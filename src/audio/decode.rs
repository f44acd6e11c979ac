//! Reading audio files of any common format (WAV, FLAC, MP3, Ogg Vorbis) through symphonia.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::Audio;
use crate::error::{Error, Result};

/// The longest file [`decode_file`] reads, so a dropped hour-long recording cannot exhaust memory.
pub const MAX_DECODED_SECONDS: f64 = 600.0;

/// Decodes the first channel of the default audio track (AudioLDM's front end takes channel 0;
/// it does not down-mix).
pub fn decode_file(path: &Path) -> Result<Audio> {
    let unreadable = |message: String| Error::Input(format!("{}: {message}", path.display()));
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| unreadable(format!("not a readable audio file ({e})")))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| unreadable("the file has no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| unreadable("the audio track has no codec parameters".into()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| unreadable(format!("unsupported codec ({e})")))?;

    let mut samples = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    let mut sample_rate = 0u32;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(unreadable(format!("cannot read the file ({e})"))),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            // A damaged packet is skipped, as players do; a file of nothing but damage ends
            // up empty and is reported below.
            Err(SymphoniaError::DecodeError(e)) => {
                tracing::warn!(file = %path.display(), error = e, "skipped a damaged packet");
                continue;
            }
            Err(e) => return Err(unreadable(format!("cannot decode the file ({e})"))),
        };
        let channels = buffer.spec().channels().count().max(1);
        sample_rate = buffer.spec().rate();
        interleaved.resize(buffer.samples_interleaved(), 0.0);
        buffer.copy_to_slice_interleaved(&mut interleaved);
        samples.extend(interleaved.iter().step_by(channels));
        if sample_rate > 0 && samples.len() as f64 > MAX_DECODED_SECONDS * sample_rate as f64 {
            return Err(unreadable(format!(
                "longer than {MAX_DECODED_SECONDS} s; trim it first"
            )));
        }
    }
    if samples.is_empty() || sample_rate == 0 {
        return Err(unreadable("the file holds no audio".into()));
    }
    Ok(Audio {
        sample_rate,
        samples,
    })
}
