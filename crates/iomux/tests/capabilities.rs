//! The capabilities table is the one source of what each model supports:
//! validation follows it for every setting on every model, and the
//! README's table is its text.

use std::time::Duration;

use iomux::server::{Config, FdExhaustion, Model, Setting};

/// A configuration that uses `setting` and nothing else a model may lack.
fn with(setting: Setting) -> Config {
    let base = Config::default();
    match setting {
        Setting::Threads => Config { threads: 2, ..base },
        Setting::IdleTimeout => Config {
            idle_timeout: Some(Duration::from_secs(5)),
            ..base
        },
        Setting::Offload => Config {
            offload_threads: 2,
            ..base
        },
        Setting::Shed => Config {
            on_fd_exhaustion: FdExhaustion::Shed,
            ..base
        },
        Setting::UringBatchWait => Config {
            uring_batch_wait: Some(Duration::from_micros(100)),
            ..base
        },
        Setting::LatencyBudget => Config {
            latency_budget: Some(Duration::from_millis(1)),
            ..base
        },
    }
}

#[test]
fn every_setting_is_accepted_exactly_where_the_table_says() {
    for setting in Setting::ALL {
        let config = with(setting);
        assert_eq!(config.settings(), [setting]);
        for model in Model::ALL {
            match config.validate_for(model) {
                Ok(()) => assert!(
                    setting.supported_by(model),
                    "{setting:?} accepted on {model}"
                ),
                Err(e) => {
                    assert!(
                        !setting.supported_by(model),
                        "{setting:?} refused on {model}: {e}"
                    );
                    let line = e.to_string();
                    assert!(!line.contains('\n'), "one line: {line}");
                    assert!(line.contains(model.name()), "names the model: {line}");
                    // Names what to use instead: some model that takes it.
                    let other = Model::ALL
                        .into_iter()
                        .find(|&m| setting.supported_by(m))
                        .expect("every setting works somewhere");
                    assert!(line.contains(other.name()), "names {other}: {line}");
                }
            }
        }
    }
}

#[test]
fn a_plain_config_works_on_every_model() {
    for model in Model::ALL {
        Config::default().validate_for(model).unwrap();
    }
}

#[test]
fn the_readme_table_is_the_capabilities_table() {
    let readme = include_str!("../../../README.md");
    let table = Model::capability_table();
    assert!(
        readme.contains(&table),
        "README.md must contain the capabilities table, as Model::capability_table() gives it:\n{table}"
    );
}
