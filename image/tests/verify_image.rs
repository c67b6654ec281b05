//! `image verify --image`: the expected digest is computed from a local image
//! with the same launch options as `image measure`.
#![forbid(unsafe_code)]

mod common;

use common::{Synth, scratch, words};
use vellum_image::snp::{LaunchOptions, launch_digest};
use vellum_image::verify::parse_args;

#[test]
fn expected_measurement_from_image_and_launch_options() {
    let img = Synth::valid(0x2_0000, 7).build();
    let dir = scratch("verify-image");
    let path = dir.join("img.bin");
    std::fs::write(&path, &img).unwrap();
    let path = path.display().to_string();

    let (opts, format, _) = parse_args(&words(&[
        "--url",
        "https://10.0.2.15:8443",
        "--image",
        &path,
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(format, "text");
    assert_eq!(
        opts.measurement,
        launch_digest(&img, &LaunchOptions::default()).unwrap()
    );
    assert_eq!(opts.nonce.len(), 32);
    assert!(opts.certs.is_none());

    let (opts, _, _) = parse_args(&words(&[
        "--url",
        "https://10.0.2.15:8443",
        "--image",
        &path,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--guest-features",
        "0x1",
    ]))
    .unwrap()
    .unwrap();
    let milan = LaunchOptions {
        vcpus: 2,
        vcpu_sig: vellum_image::snp::cpu::vcpu_type("EPYC-Milan")
            .unwrap()
            .signature,
        guest_features: 1,
    };
    assert_eq!(opts.measurement, launch_digest(&img, &milan).unwrap());
    assert_ne!(
        opts.measurement,
        launch_digest(&img, &LaunchOptions::default()).unwrap()
    );
}
