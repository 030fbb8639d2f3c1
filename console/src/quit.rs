//! The `q` that stops `meshlens tap` and `meshlens top` without taking the terminal over: on a
//! terminal, stdin leaves canonical mode (a key counts without Enter, and is not echoed) but output
//! and Ctrl-C work as before; the mode comes back when the [`QuitKey`] is dropped. Piped stdin works
//! the same way: a `q` in it stops the command.

use std::io::Read;

use rustix::termios::{LocalModes, OptionalActions, SpecialCodeIndex, Termios, tcgetattr, tcsetattr};
use std::sync::Arc;

use tokio::sync::Notify;

/// Watches stdin for `q`; restores the terminal when dropped.
pub struct QuitKey {
    saved: Option<Termios>,
    pressed: Arc<Notify>,
}

impl QuitKey {
    /// Starts watching.
    pub fn watch() -> Self {
        let saved = non_canonical();
        let pressed = Arc::new(Notify::new());
        let tx = pressed.clone();
        // The thread blocks on stdin for the life of the process; it is never joined. At the end
        // of a piped stdin it just ends: no `q`, nothing stops.
        let _ = std::thread::Builder::new().name("meshlens-quit-key".into()).spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut byte = [0u8; 1];
            while let Ok(1) = stdin.read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q') {
                    tx.notify_one();
                    return;
                }
            }
        });
        Self { saved, pressed }
    }

    /// Resolves on `q` (or `Q`); a press before the call is kept.
    pub async fn pressed(&self) {
        self.pressed.notified().await;
    }
}

/// Turns off canonical mode and echo on a terminal stdin; the old mode, to restore.
fn non_canonical() -> Option<Termios> {
    let stdin = rustix::stdio::stdin();
    if !rustix::termios::isatty(stdin) {
        return None;
    }
    let saved = tcgetattr(stdin).ok()?;
    let mut t = saved.clone();
    t.local_modes &= !(LocalModes::ICANON | LocalModes::ECHO);
    t.special_codes[SpecialCodeIndex::VMIN] = 1;
    t.special_codes[SpecialCodeIndex::VTIME] = 0;
    tcsetattr(stdin, OptionalActions::Now, &t).ok()?;
    Some(saved)
}

impl Drop for QuitKey {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, saved);
        }
    }
}
