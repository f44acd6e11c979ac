//! The audio layer: the log-mel front end against librosa's filterbank values and a direct DFT,
//! resampling, decoding (and its errors), and playback without a sound card.

#[path = "common/clips.rs"]
mod clips;

use std::f64::consts::PI;

use audioldm::audio::Audio;
use audioldm::audio::decode::decode_file;
use audioldm::audio::mel::{HOP, MelFrontEnd, N_FFT, N_MELS, slaney_mel_filters};
#[cfg(feature = "app")]
use audioldm::audio::playback::Player;
use audioldm::audio::resample::resample;
use audioldm::audio::wav::{read_comment, read_wav};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("audioldm-audio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Deterministic noise in [-1, 1) (a small LCG keeps this test free of RNG crates).
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

#[test]
fn mel_filterbank_matches_librosa() {
    // The original's TacotronSTFT:
    // librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000).
    let filters = slaney_mel_filters(16_000.0, N_FFT, N_MELS, 0.0, 8_000.0);
    let bins = N_FFT / 2 + 1;
    assert_eq!(filters.len(), N_MELS * bins);
    let row0 = &filters[..bins];
    let want = [0.00725564, 0.01451128, 0.02133115, 0.01407551, 0.00681987];
    for (k, w) in want.iter().enumerate() {
        assert!(
            (row0[k + 1] - w).abs() < 1e-7,
            "bin {}: {} vs {w}",
            k + 1,
            row0[k + 1]
        );
    }
    assert_eq!(row0[0], 0.0);
    assert!(row0[6..].iter().all(|&v| v == 0.0));
    let max = filters.iter().copied().fold(0.0, f64::max);
    assert!((max - 0.021331152).abs() < 1e-8, "max {max}");
    // Row sums of librosa's matrix (through transformers' `mel_filter_bank` with Slaney scale and
    // norm, which equals it): about 0.0639934, off by up to 1.14e-3 where bins are coarse.
    let sums: Vec<f64> = filters.chunks(bins).map(|row| row.iter().sum()).collect();
    for (m, want) in [
        (0, 0.06399346),
        (1, 0.06399346),
        (62, 0.06399558),
        (63, 0.06400368),
    ] {
        assert!((sums[m] - want).abs() < 1e-8, "row {m} sums to {}", sums[m]);
    }
    let lo = sums.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = sums.iter().copied().fold(0.0, f64::max);
    assert!(
        (lo - 0.06323287).abs() < 1e-8 && (hi - 0.06513735).abs() < 1e-8,
        "{lo} {hi}"
    );
}

/// `ln(max(filters @ |DFT(window * frame)|, 1e-5))` in f64, straight from the definitions.
fn reference_log_mel(samples: &[f32]) -> Vec<f64> {
    let n = samples.len() as isize;
    let pad = (N_FFT / 2) as isize;
    let reflect = |i: isize| -> f64 {
        let j = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        samples[j as usize] as f64
    };
    let window: Vec<f64> = (0..N_FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / N_FFT as f64).cos())
        .collect();
    let filters = slaney_mel_filters(16_000.0, N_FFT, N_MELS, 0.0, 8_000.0);
    let bins = N_FFT / 2 + 1;
    let frames = 1 + samples.len() / HOP;
    let mut out = Vec::new();
    for f in 0..frames {
        let frame: Vec<f64> = (0..N_FFT)
            .map(|i| reflect((f * HOP) as isize + i as isize - pad) * window[i])
            .collect();
        let magnitude: Vec<f64> = (0..bins)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, x) in frame.iter().enumerate() {
                    let angle = -2.0 * PI * (k * i % N_FFT) as f64 / N_FFT as f64;
                    re += x * angle.cos();
                    im += x * angle.sin();
                }
                (re * re + im * im).sqrt()
            })
            .collect();
        for m in 0..N_MELS {
            let energy: f64 = (0..bins)
                .map(|k| filters[m * bins + k] * magnitude[k])
                .sum();
            out.push(energy.max(1e-5).ln());
        }
    }
    out
}

#[test]
fn log_mel_matches_a_direct_dft() {
    let front_end = MelFrontEnd::new();
    for (len, seed) in [(1237usize, 1u64), (600, 2), (3200, 3)] {
        let samples: Vec<f32> = noise(len, seed).iter().map(|x| x * 0.3).collect();
        let mel = front_end.log_mel(&samples);
        assert_eq!(mel.frames, 1 + len / HOP, "frames for {len} samples");
        assert_eq!(mel.bins, N_MELS);
        let want = reference_log_mel(&samples);
        let err = mel
            .data
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        eprintln!("log-mel of {len} samples: max rel err {:.2e}", err / scale);
        assert!(err / scale < 1e-4, "{len} samples: max abs err {err}");
    }
    // Silence sits at the floor, ln(1e-5).
    let silent = front_end.log_mel(&[0.0; 800]);
    assert!(silent.data.iter().all(|v| (v - 1e-5f32.ln()).abs() < 1e-6));
}

#[test]
fn resampling_keeps_a_sine_and_the_length() {
    let (from, to) = (44_100u32, 16_000u32);
    let seconds = 0.5;
    let n = (from as f64 * seconds) as usize;
    let tone = |rate: u32, i: usize| (2.0 * PI * 440.0 * i as f64 / rate as f64).sin() as f32;
    let input: Vec<f32> = (0..n).map(|i| tone(from, i)).collect();
    let output = resample(&input, from, to).expect("resample");
    assert_eq!(
        output.len(),
        (n as f64 * to as f64 / from as f64).ceil() as usize
    );
    // Away from the edges the output is the same sine at the new rate.
    let err_at = |shift: f64| {
        (200..output.len() - 200)
            .map(|i| {
                (output[i] - (2.0 * PI * 440.0 * (i as f64 + shift) / to as f64).sin() as f32).abs()
            })
            .fold(0.0f32, f32::max)
    };
    // Aligned to within a fraction of an output sample (rubato compensates its delay in whole
    // samples): the best sub-sample shift leaves only the filter's error.
    let (shift, err) = (-50..=50)
        .map(|k| (k as f64 / 100.0, err_at(k as f64 / 100.0)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0.0, f32::INFINITY));
    eprintln!("resampled 440 Hz sine: max abs err {err:.2e} at a shift of {shift} samples");
    assert!(err < 5e-3, "max abs err {err}");
    assert_eq!(resample(&input, from, from).expect("same rate"), input);
    assert!(resample(&input, 0, to).is_err());
}

#[test]
fn decoding_takes_channel_zero_and_bad_files_are_clear_errors() {
    let dir = temp_dir("decode");
    let path = dir.join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 22_050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).expect("create");
    for i in 0..1000i16 {
        writer.write_sample(i * 10).expect("left");
        writer.write_sample(-1000i16).expect("right");
    }
    writer.finalize().expect("finalize");
    let Audio {
        sample_rate,
        samples,
    } = decode_file(&path, 60.0).expect("decode");
    assert_eq!(sample_rate, 22_050);
    assert_eq!(samples.len(), 1000);
    for (i, s) in samples.iter().enumerate() {
        assert!(
            (s - (i as f32 * 10.0 / 32768.0)).abs() < 1e-6,
            "sample {i}: {s}"
        );
    }

    let junk = dir.join("junk.ogg");
    std::fs::write(&junk, b"OggS but not really an ogg stream").expect("write");
    let empty = dir.join("empty.flac");
    std::fs::write(&empty, b"").expect("write");
    let truncated = dir.join("truncated.wav");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&truncated, &bytes[..30]).expect("write");
    for bad in [&junk, &empty, &truncated, &dir.join("missing.mp3")] {
        let err = decode_file(bad, 60.0).expect_err("a bad file must be an error");
        let name = bad.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(err.to_string().contains(name), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "app")]
#[test]
fn playback_plays_or_says_why_it_cannot() {
    let mut player = Player::default();
    let audio = Audio {
        sample_rate: 16_000,
        samples: vec![0.0; 16_000],
    };
    match player.play(&audio, 7) {
        // A machine with a sound card (or the ALSA null device) plays.
        Ok(()) => {
            let (id, position) = player.playing().expect("playing right after play");
            assert_eq!(id, 7);
            assert!((0.0..=1.5).contains(&position));
            player.stop();
            assert!(player.playing().is_none());
        }
        // CI has none: the error says playback is off and the rest works.
        Err(e) => {
            eprintln!("no playback here: {e}");
            assert!(e.to_string().contains("playback is off"), "{e}");
            assert!(player.playing().is_none());
        }
    }
}

/// A WAV header (RIFF, `fmt ` PCM mono, `data` of `data_bytes` declared) followed by `payload`.
fn wav_header(rate: u32, bits: u16, data_bytes: u32, payload: &[u8]) -> Vec<u8> {
    let block = (bits / 8).max(1);
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&1u16.to_le_bytes()); // PCM
    fmt.extend_from_slice(&1u16.to_le_bytes()); // mono
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate.wrapping_mul(block as u32)).to_le_bytes());
    fmt.extend_from_slice(&block.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    riff_wave(&fmt, data_bytes, payload)
}

/// A RIFF/WAVE file of the `fmt ` chunk body `fmt`, then `data` declaring `data_bytes`, then
/// `payload`.
fn riff_wave(fmt: &[u8], data_bytes: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(
        &(20 + fmt.len() as u32)
            .wrapping_add(data_bytes)
            .to_le_bytes(),
    );
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(fmt);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_bytes.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The `fmt ` body of 16-bit PCM at 8 kHz declaring `channels`, in the plain (16 bytes) or the
/// extensible layout (40 bytes, with `channel_mask`).
fn pcm16_format(channels: u16, extensible: Option<u32>) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&(if extensible.is_some() { 0xfffeu16 } else { 1 }).to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&16000u32.to_le_bytes());
    fmt.extend_from_slice(&2u16.to_le_bytes()); // block align as for mono
    fmt.extend_from_slice(&16u16.to_le_bytes());
    if let Some(mask) = extensible {
        fmt.extend_from_slice(&22u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        fmt.extend_from_slice(&mask.to_le_bytes());
        // KSDATAFORMAT_SUBTYPE_PCM
        fmt.extend_from_slice(&[
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38,
            0x9b, 0x71,
        ]);
    }
    fmt
}

#[test]
fn hostile_audio_files_are_refused_before_they_cost_anything() {
    let dir = std::env::temp_dir().join(format!("audioldm-hostile-audio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // A FIFO would block a reader forever: refused by every reader without opening it.
    let fifo = dir.join("pipe.wav");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    for err in [
        decode_file(&fifo, 60.0).map(|_| ()).unwrap_err(),
        read_comment(&fifo).map(|_| ()).unwrap_err(),
        read_wav(&fifo).map(|_| ()).unwrap_err(),
    ] {
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    // A small file that declares 4 GB of 16-bit audio at 96 kHz (over 6 hours): refused from
    // its header.
    let long = dir.join("declares-hours.wav");
    std::fs::write(&long, wav_header(96_000, 16, u32::MAX - 64, &[0u8; 4096])).unwrap();
    let err = decode_file(&long, 60.0).unwrap_err().to_string();
    assert!(err.contains("at most 60 s"), "{err}");

    // A sample rate far above any real one.
    let fast = dir.join("fast.wav");
    std::fs::write(&fast, wav_header(3_000_000_000, 16, 4096, &[0u8; 4096])).unwrap();
    let err = decode_file(&fast, 60.0).unwrap_err().to_string();
    assert!(
        err.contains("sample rate") || err.contains("fast.wav"),
        "{err}"
    );

    // Headers that overflow symphonia's arithmetic (found by the fuzzer): 65532 channels times
    // 2 bytes, and an extensible channel mask whose top bit is set with fewer bits than
    // channels. Each is a clear error, not a panic.
    for (name, fmt) in [
        ("channels.wav", pcm16_format(65532, None)),
        ("mask.wav", pcm16_format(2, Some(0x8000_0000))),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, riff_wave(&fmt, 64, &[0u8; 64])).unwrap();
        let err = decode_file(&file, 60.0).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }

    // Zero bits per sample: an error, not an overflow.
    let zero = dir.join("zero-bits.wav");
    std::fs::write(&zero, wav_header(16_000, 0, 64, &[0u8; 64])).unwrap();
    assert!(read_wav(&zero).is_err());
    assert!(decode_file(&zero, 60.0).is_err());

    // The comment of a file with a gigabyte of (sparse) audio before it is found without
    // reading the audio.
    let big = dir.join("big.wav");
    let data_bytes: u32 = 1 << 30;
    let mut file = std::fs::File::create(&big).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    file.write_all(&wav_header(16_000, 16, data_bytes, &[]))
        .unwrap();
    file.seek(SeekFrom::Current(data_bytes as i64)).unwrap();
    let text = b"big file\0";
    file.write_all(b"LIST").unwrap();
    file.write_all(&(4 + 8 + text.len() as u32 + 1).to_le_bytes())
        .unwrap();
    file.write_all(b"INFOICMT").unwrap();
    file.write_all(&(text.len() as u32).to_le_bytes()).unwrap();
    file.write_all(text).unwrap();
    file.write_all(&[0]).unwrap();
    drop(file);
    let started = std::time::Instant::now();
    assert_eq!(read_comment(&big).unwrap().as_deref(), Some("big file"));
    println!(
        "comment after 1 GiB of audio found in {:?}",
        started.elapsed()
    );
    // And a file that is not a WAV at all.
    std::fs::write(dir.join("text.wav"), b"hello").unwrap();
    assert!(read_comment(&dir.join("text.wav")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_silence_rule_refuses_dither_and_accepts_a_quiet_clip() {
    use audioldm::Error;
    use audioldm::audio::{SILENCE_DBFS, check_audible, peak_dbfs};
    assert_eq!(SILENCE_DBFS, -80.0);
    let dither = clips::dither();
    let peak = peak_dbfs(&dither);
    assert!((-90.5..-90.0).contains(&peak), "{peak}");
    let err = check_audible(&dither, "dither.wav").unwrap_err();
    assert!(
        matches!(err, Error::Silent { ref clip, peak_dbfs } if clip == "dither.wav" && peak_dbfs == peak),
        "{err:?}"
    );
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "dither.wav is silent: its peak is {peak:.1} dBFS, below the -80 dBFS threshold: \
             there is no sound to work from"
        )
    );
    let clip = Audio {
        sample_rate: 16_000,
        samples: dither.clone(),
    };
    assert_eq!(
        clip.check_audible("dither.wav").unwrap_err().to_string(),
        message
    );
    // Quiet but there: -70 dBFS passes; the threshold sits at -80 dBFS.
    check_audible(&clips::sine_at(-70.0, 8000), "quiet.wav").expect("a -70 dBFS clip is sound");
    check_audible(&clips::sine_at(-79.9, 8000), "quiet.wav").expect("just above the threshold");
    assert!(matches!(
        check_audible(&clips::sine_at(-80.1, 8000), "quiet.wav"),
        Err(Error::Silent { .. })
    ));
    // Digital silence.
    let err = check_audible(&[0.0; 800], "zeros.wav").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("zeros.wav is silent: its peak is -inf dBFS"),
        "{err}"
    );
    let mut nan = clips::sine_at(-6.0, 8000);
    nan[3] = f32::NAN;
    let err = check_audible(&nan, "nan.wav").unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    // The edits' front end scales its input to peak 0.5: it refuses what would scale dither up.
    let front_end = MelFrontEnd::with_bands(64);
    let err = front_end.wav_to_fbank(&dither, 52).unwrap_err();
    assert!(matches!(err, Error::Silent { .. }), "{err:?}");
    front_end
        .wav_to_fbank(&clips::sine_at(-70.0, 8000), 52)
        .expect("a quiet clip is scaled up");
    // It removes the mean first: a constant offset with dither on it is no sound either.
    let offset: Vec<f32> = dither.iter().map(|s| s + 0.25).collect();
    check_audible(&offset, "offset.wav").expect("its peak is -12 dBFS");
    let err = front_end.wav_to_fbank(&offset, 52).unwrap_err();
    assert!(
        err.to_string().starts_with("the clip at 16 kHz is silent"),
        "{err}"
    );
}
