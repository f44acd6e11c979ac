//! WAV output: both sample formats round-trip, and the settings comment is readable.

use std::path::Path;

use audioldm::audio::wav::{WavFormat, read_comment, read_wav, write_wav};

#[test]
fn wav_round_trips_with_the_settings_comment() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wav");
    std::fs::create_dir_all(&dir).unwrap();
    let samples: Vec<f32> = (0..1601).map(|i| (i as f32 * 0.01).sin() * 0.9).collect();
    let comment = r#"{"prompt":"a dog barking","seed":3}"#;
    for (format, tol) in [(WavFormat::Pcm16, 0.5 / 32768.0), (WavFormat::Float32, 0.0)] {
        let path = dir.join(format!("{format:?}.wav"));
        write_wav(&path, &samples, 16000, format, Some(comment)).unwrap();
        let (read, rate) = read_wav(&path).expect("hound reads the file back, INFO chunk and all");
        assert_eq!(rate, 16000);
        assert_eq!(read.len(), samples.len());
        let err = read
            .iter()
            .zip(&samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err <= tol, "{format:?}: {err}");
        assert_eq!(read_comment(&path).unwrap().as_deref(), Some(comment));
    }
    let missing = dir.join("no/such/dir/out.wav");
    assert!(write_wav(&missing, &samples, 16000, WavFormat::Pcm16, None).is_err());
    assert!(read_wav(&dir.join("nothing.wav")).is_err());
}
