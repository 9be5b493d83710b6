//! Test support shared by the podtap integration tests that run a live broker.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use podtap_broker::{Broker, BrokerConfig, BrokerStats};

/// A broker running in a lab host's namespace, on its own thread; stopped on drop.
pub struct RunningBroker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<BrokerStats>>,
}

impl RunningBroker {
    /// Starts a broker with the configuration `yaml` inside network namespace `netns` and
    /// returns once it listens.
    pub fn start(netns: &str, yaml: &str) -> RunningBroker {
        let config = BrokerConfig::parse(yaml, Path::new("test.yaml")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            podtap_cluster::netns::enter(&netns).unwrap();
            let mut broker = Broker::start(config).unwrap();
            ready_tx.send(()).unwrap();
            broker.run(&flag, None);
            broker.finish()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("broker started");
        RunningBroker {
            stop,
            handle: Some(handle),
        }
    }

    /// Lets the last datagrams arrive, then finishes the broker and returns its counters.
    pub fn stop(mut self) -> BrokerStats {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
