import Foundation
import Testing
@testable import StrataDaemon

/// One daemon per directory: the second is refused with the holder's pid, and the directory is
/// free again once the holder lets go.
struct DirectoryLockTests {
    static func temporaryDirectory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("strata-lock-\(UUID().uuidString)").path
    }

    @Test func aHeldDirectoryIsRefusedWithItsHolderThenFreeOnceLetGo() throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var first: DirectoryLock? = try DirectoryLock(directory: directory)
        #expect(first != nil)
        #expect(throws: DirectoryLock.InUse(directory: directory, holder: "\(getpid())")) {
            try DirectoryLock(directory: directory)
        }
        first = nil
        let second = try Self.lockOnceFree(directory)
        #expect(second.directory == directory)
    }

    /// Takes the lock, retrying for up to 2 s while it is in use. A process that another test
    /// spawns at the moment holds a copy of every descriptor (and so the `flock`) from its fork
    /// until its exec closes them; the lock is free once that brief copy is gone.
    static func lockOnceFree(_ directory: String) throws -> DirectoryLock {
        let deadline = ContinuousClock.now + .seconds(2)
        while true {
            do {
                return try DirectoryLock(directory: directory)
            } catch is DirectoryLock.InUse where ContinuousClock.now < deadline {
                usleep(10_000)
            }
        }
    }

    @Test func aDirectoryThatCannotBeMadeIsNamedWithItsKeyAndTheReason() {
        // (/proc takes no new directories, not even for root.)
        #expect(throws: DirectoryLock.CannotLock(role: "state_dir", path: "/proc/strata-test", errno: ENOENT)) {
            try DirectoryLock(directory: "/proc/strata-test/state", role: "state_dir")
        }
        #expect(String(describing: DirectoryLock.CannotLock(role: "state_dir", path: "/proc/x", errno: ENOENT))
            == "cannot use state_dir /proc/x: No such file or directory")
    }

    @Test func theStateDirectoryAndTheTierDirectoriesOutsideItAreLocked() throws {
        let root = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var config = try ConfigLoader.parse(yaml: "models: []", environment: [:])
        config.stateDirectory = root + "/state"
        config.tiers.nvme.directory = root + "/state/nvme"   // inside: the state directory's lock covers it
        config.tiers.host.directory = root + "/shm"
        let locks = try Daemon.lockDirectories(of: config)
        #expect(locks.map(\.directory) == [root + "/state", root + "/shm"])
        #expect(throws: DirectoryLock.InUse.self) { try Daemon.lockDirectories(of: config) }
        config.stateDirectory = root + "/other"
        #expect(throws: DirectoryLock.InUse.self, "the staged weights' directory is still held") {
            try Daemon.lockDirectories(of: config)
        }
        withExtendedLifetime(locks) {}
    }

    @Test func aTierDirectoryThatCannotBeMadeIsLeftToTheTiersButAStateDirectoryStopsTheStart() throws {
        let root = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var config = try ConfigLoader.parse(yaml: "models: []", environment: [:])
        config.stateDirectory = root + "/state"
        config.tiers.host.directory = "/proc/strata-test/shm"
        #expect(try Daemon.lockDirectories(of: config).map(\.directory) == [root + "/state"])
        config.stateDirectory = "/proc/strata-test/state"
        #expect(throws: DirectoryLock.CannotLock.self) { try Daemon.lockDirectories(of: config) }
    }
}
