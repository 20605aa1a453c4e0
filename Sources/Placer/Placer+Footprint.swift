extension Placer {
    /// Records a measured footprint of `name`'s runtime (see `PlacerEvent.footprintMeasured`).
    ///
    /// Each runtime is known by `loads` at the time it became ready: its first report replaces a
    /// measurement of an earlier runtime (the command or the model may have changed since), and
    /// later reports keep the peak. For a model whose memory was estimated, the measurement is
    /// what is accounted from now on, for this runtime and for the next starts, until a newer
    /// runtime reports; the reconcile that follows brings a device pushed over its budget back
    /// under it (`relieveOverBudget`). For a declared model it is only shown.
    mutating func noteFootprint(of name: String, bytes: UInt64) {
        guard var state = models[name] else { return }
        switch state.phase {
        case .ready, .draining:
            break
        default:
            // Not (or no longer) a healthy runtime: a late report describes one on its way out.
            return
        }
        if state.measuredLoad == state.loads, let peak = state.measuredBytes {
            state.measuredBytes = max(peak, bytes)
        } else {
            state.measuredBytes = bytes
        }
        state.measuredLoad = state.loads
        models[name] = state
    }
}
