//! The terminal UI's event loop: one `tokio::select!`, biased to input first, then data from the
//! collector task, then a one-second tick; it redraws only when something changed, at most once per
//! batch of pending actions. `ratatui::init` restores the terminal on panic; a drop guard restores it
//! on every other way out.

use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::app::{Action, App, key_action};
use crate::client::{Client, ClientError};
use crate::{live, ui};

/// Why the console stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The collector URL.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The terminal.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the console against the collector at `collector` until the user quits.
pub async fn run(collector: &str, token: Option<&str>) -> Result<(), ConsoleError> {
    let client = Client::with_token(collector, token)?;
    let mut terminal = ratatui::init();
    let _restore = Restore;
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (action_tx, mut actions) = mpsc::unbounded_channel();
    let net = tokio::spawn(live::run(client, command_rx, action_tx));
    let mut app = App::new(collector);
    let _ = commands.send(app.refresh());
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = true;
    let result = loop {
        if dirty {
            if let Err(e) = terminal.draw(|f| ui::draw(f, &mut app)) {
                break Err(e.into());
            }
            dirty = false;
        }
        let action = tokio::select! {
            biased;
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => key_action(k, &app),
                Some(Ok(Event::Resize(..))) => {
                    dirty = true;
                    None
                }
                Some(Ok(_)) => None,
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            Some(a) = actions.recv() => Some(a),
            _ = tick.tick() => Some(Action::Tick(Instant::now())),
        };
        if let Some(a) = action {
            if let Some(c) = app.update(a) {
                let _ = commands.send(c);
            }
            dirty = true;
        }
        // Apply whatever else arrived before drawing once.
        while let Ok(a) = actions.try_recv() {
            if let Some(c) = app.update(a) {
                let _ = commands.send(c);
            }
        }
        if app.quit {
            break Ok(());
        }
    };
    net.abort();
    result
}
