import Foundation

/// The storage tiers as the admin API sees them; the daemon implements it over the TierStore,
/// so this module never depends on it.
public protocol TierBackend: Sendable {
    /// Each tier's policy and figures, as a JSON object.
    func tierStatus() async throws -> Data
    /// Applies a run-time change given as JSON (`{"host": {...}, "nvme": {...}}`) and returns
    /// the new status. A bad change throws `GatewayError` naming the key, and changes nothing.
    func updateTiers(_ body: Data) async throws -> Data
}
