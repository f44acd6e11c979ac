//! Reading audio files of any common format (WAV, FLAC, MP3, Ogg Vorbis) through symphonia.

use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::Audio;
use crate::error::{Error, Result};
use crate::untrusted::{Readable, catch_panic, open_readable};

/// The highest sample rate [`decode_file`] accepts (studio equipment goes to 768 kHz): with the
/// duration limit it bounds the decoded samples a file can ask for.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Decodes the first channel of the default audio track (AudioLDM's front end takes channel 0;
/// it does not down-mix), refusing a file longer than `max_seconds`: before decoding when the
/// container declares its length, else as soon as the decoded audio passes the limit. So a small
/// file cannot ask for unbounded memory, and nothing but a regular file is opened (a FIFO would
/// block the caller forever).
///
/// symphonia panics on some malformed headers (e.g. an overflow on a WAV declaring 65532
/// channels, in builds with overflow checks); such a panic is held here and becomes an error.
pub fn decode_file(path: &Path, max_seconds: f64) -> Result<Audio> {
    let file = open_readable(path)?;
    catch_panic(|| decode_opened(file, path, max_seconds)).unwrap_or_else(|panic| {
        Err(unreadable(
            path,
            format!("the audio decoder failed on this file ({panic})"),
        ))
    })
}

fn unreadable(path: &Path, message: String) -> Error {
    Error::Input(format!("{}: {message}", path.display()))
}

impl symphonia::core::io::MediaSource for Readable {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Readable::byte_len(self)
    }
}

fn decode_opened(file: Readable, path: &Path, max_seconds: f64) -> Result<Audio> {
    let unreadable = |message: String| unreadable(path, message);
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
    let declared_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| unreadable("the audio track has no codec parameters".into()))?;
    let too_fast = |rate: u32| {
        unreadable(format!(
            "a sample rate of {rate} Hz is above the {MAX_SAMPLE_RATE} Hz this reads"
        ))
    };
    let too_long = |seconds: f64| {
        unreadable(format!(
            "{seconds:.1} s long; at most {max_seconds} s can be used: trim it first"
        ))
    };
    if let Some(rate) = params.sample_rate {
        if rate > MAX_SAMPLE_RATE {
            return Err(too_fast(rate));
        }
        if let Some(frames) = declared_frames
            && rate > 0
            && frames as f64 > max_seconds * rate as f64
        {
            return Err(too_long(frames as f64 / rate as f64));
        }
    }
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
        if sample_rate > MAX_SAMPLE_RATE {
            return Err(too_fast(sample_rate));
        }
        interleaved.resize(buffer.samples_interleaved(), 0.0);
        buffer.copy_to_slice_interleaved(&mut interleaved);
        samples.extend(interleaved.iter().step_by(channels));
        if sample_rate > 0 && samples.len() as f64 > max_seconds * sample_rate as f64 {
            return Err(too_long(samples.len() as f64 / sample_rate as f64));
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
