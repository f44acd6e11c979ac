//! WAV files through `hound`, with the generation settings recorded in a RIFF `LIST/INFO` chunk
//! (`ICMT` comment, `ISFT` software), which players and `sox --info`/`ffprobe` show.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Sample format of a written WAV file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit PCM, rounded to the nearest step of 1/32768 (what every player plays).
    #[default]
    Pcm16,
    /// 32-bit IEEE float (lossless for the model's output).
    Float32,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hound_error(path: &Path, e: hound::Error) -> Error {
    match e {
        hound::Error::IoError(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Input(format!("{}: {other}", path.display())),
    }
}

/// Writes mono `samples` at `sample_rate`; `comment` (if any) goes into the INFO chunk.
pub fn write_wav(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    format: WavFormat,
    comment: Option<&str>,
) -> Result<()> {
    let bytes = wav_bytes(samples, sample_rate, format, comment)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    crate::untrusted::write_file(path, &bytes)
}

/// The bytes of the WAV file [`write_wav`] writes (a browser offers them as a download).
pub fn wav_bytes(
    samples: &[f32],
    sample_rate: u32,
    format: WavFormat,
    comment: Option<&str>,
) -> std::result::Result<Vec<u8>, String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: match format {
            WavFormat::Pcm16 => 16,
            WavFormat::Float32 => 32,
        },
        sample_format: match format {
            WavFormat::Pcm16 => hound::SampleFormat::Int,
            WavFormat::Float32 => hound::SampleFormat::Float,
        },
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).map_err(|e| e.to_string())?;
    for &s in samples {
        let written = match format {
            WavFormat::Pcm16 => {
                writer.write_sample((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
            }
            WavFormat::Float32 => writer.write_sample(s),
        };
        written.map_err(|e| e.to_string())?;
    }
    writer.finalize().map_err(|e| e.to_string())?;
    let mut bytes = out.into_inner();
    if let Some(comment) = comment {
        append_info(&mut bytes, comment)?;
    }
    Ok(bytes)
}

/// Appends a `LIST/INFO` chunk after the data chunk and fixes the RIFF size.
fn append_info(wav: &mut Vec<u8>, comment: &str) -> std::result::Result<(), String> {
    let mut info = Vec::new();
    info.extend_from_slice(b"INFO");
    for (id, text) in [
        (
            b"ISFT",
            concat!("audioldm-wgpu ", env!("CARGO_PKG_VERSION")),
        ),
        (b"ICMT", comment),
    ] {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        info.extend_from_slice(id);
        info.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        info.extend_from_slice(&bytes);
        if bytes.len() % 2 == 1 {
            info.push(0);
        }
    }
    if wav.len() % 2 == 1 {
        wav.push(0);
    }
    wav.extend_from_slice(b"LIST");
    wav.extend_from_slice(&(info.len() as u32).to_le_bytes());
    wav.extend_from_slice(&info);
    let riff_size = u32::try_from(wav.len() - 8).map_err(|_| "WAV file over 4 GiB".to_string())?;
    wav[4..8].copy_from_slice(&riff_size.to_le_bytes());
    Ok(())
}

/// The largest `LIST` chunk [`read_comment`] reads; a longer one is skipped.
const MAX_INFO_BYTES: u64 = 1 << 20;

/// Reads the `ICMT` comment of a WAV file's `LIST/INFO` chunk (as [`write_wav`] writes it), if
/// any. Walks the RIFF chunk headers and reads only a `LIST` chunk of at most 1 MiB, so the
/// audio data is never read.
pub fn read_comment(path: &Path) -> Result<Option<String>> {
    let err = io_error(path);
    let not_wav = || Error::Input(format!("{}: not a WAV file", path.display()));
    let mut file = std::io::BufReader::new(crate::untrusted::open_readable(path)?);
    let mut header = [0u8; 12];
    file.read_exact(&mut header).map_err(|_| not_wav())?;
    if &header[0..4] != b"RIFF" || &header[8..12] != b"WAVE" {
        return Err(not_wav());
    }
    // Fills `buf`, or says the file ended first.
    let fill =
        |file: &mut std::io::BufReader<crate::untrusted::Readable>, buf: &mut [u8]| match file
            .read_exact(buf)
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(err(e)),
        };
    loop {
        let mut chunk = [0u8; 8];
        if !fill(&mut file, &mut chunk)? {
            return Ok(None);
        }
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        // Chunks are padded to an even length.
        let padded = size + (size & 1);
        if &chunk[0..4] == b"LIST" && size <= MAX_INFO_BYTES {
            let mut list = vec![0u8; size as usize];
            if !fill(&mut file, &mut list)? {
                return Ok(None);
            }
            if let Some(comment) = info_comment(&list) {
                return Ok(Some(comment));
            }
            file.seek_relative((padded - size) as i64).map_err(&err)?;
        } else {
            file.seek_relative(padded as i64).map_err(&err)?;
        }
    }
}

/// The `ICMT` entry of a `LIST` chunk's body, if it is an `INFO` list that has one.
fn info_comment(list: &[u8]) -> Option<String> {
    let mut rest = list.strip_prefix(b"INFO")?;
    while rest.len() >= 8 {
        let (id, tail) = rest.split_at(4);
        let size = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
        let body = tail.get(4..4 + size.min(tail.len() - 4))?;
        if id == b"ICMT" {
            return Some(
                String::from_utf8_lossy(body)
                    .trim_end_matches('\0')
                    .to_string(),
            );
        }
        let next = (4 + size + (size & 1)).min(tail.len());
        rest = &tail[next..];
    }
    None
}

/// Reads a WAV file as mono f32 (channel 0) and its sample rate.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let file = std::io::BufReader::new(crate::untrusted::open_readable(path)?);
    let mut reader = hound::WavReader::new(file).map_err(|e| hound_error(path, e))?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    if !(1..=32).contains(&spec.bits_per_sample) {
        return Err(Error::Input(format!(
            "{}: {} bits per sample is not a WAV sample size",
            path.display(),
            spec.bits_per_sample
        )));
    }
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| hound_error(path, e))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| hound_error(path, e))?
        }
    };
    Ok((
        samples.into_iter().step_by(channels).collect(),
        spec.sample_rate,
    ))
}
