import Foundation

/// A process's resident memory as Linux reports it in /proc/PID/status.
///
/// The footprint is `resident` (VmRSS = RssAnon + RssFile + RssShmem), read once the runtime has
/// finished loading. The file-backed part counts on purpose: llama-server maps the GGUF file, so
/// weights kept in RAM show up as RssFile (or RssShmem when the file lives on tmpfs/shm), not as
/// anonymous memory; leaving them out would call a CPU model almost free. With GPU offload
/// llama.cpp unmaps the ranges it has uploaded, so RssFile then holds only what stays on the host.
/// KV cache and compute buffers on the host are RssAnon.
///
/// `peak` (VmHWM) is the high-water mark, loading included; a load spike far above `resident`
/// is worth logging but is not what the model holds while it serves. Two replicas mapping the same
/// file share its page-cache pages, so summing their RssFile counts those pages twice.
public struct ProcessMemory: Sendable, Equatable {
    /// VmRSS: resident now.
    public var resident: UInt64
    /// VmHWM: the most that was ever resident.
    public var peak: UInt64
    /// RssAnon: heap, stacks, anonymous mappings (KV cache and buffers on the host).
    public var anonymous: UInt64
    /// RssFile: resident pages of mapped files (mmap'd weights, libraries).
    public var file: UInt64
    /// RssShmem: resident shared memory (tmpfs, memfd, SysV).
    public var shared: UInt64

    public init(resident: UInt64, peak: UInt64, anonymous: UInt64, file: UInt64, shared: UInt64) {
        self.resident = resident
        self.peak = peak
        self.anonymous = anonymous
        self.file = file
        self.shared = shared
    }

    /// The figure to use as the process's footprint.
    public var footprint: UInt64 { resident }

    public static let zero = ProcessMemory(resident: 0, peak: 0, anonymous: 0, file: 0, shared: 0)

    /// Adds another process's figures (for a runtime and its children); peaks add up to an upper bound.
    public static func + (a: ProcessMemory, b: ProcessMemory) -> ProcessMemory {
        ProcessMemory(resident: a.resident + b.resident, peak: a.peak + b.peak, anonymous: a.anonymous + b.anonymous,
                      file: a.file + b.file, shared: a.shared + b.shared)
    }

    /// Parses the text of /proc/PID/status. Nil when it has no VmRSS line: a kernel thread or a
    /// zombie, which hold no user memory. Lines read "VmRSS:     123456 kB" (kB meaning KiB);
    /// fields a kernel lacks (RssAnon and friends need Linux 4.5) are 0.
    public static func parse(status text: String) -> ProcessMemory? {
        var fields: [Substring: UInt64] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon]
            guard ["VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"].contains(name) else { continue }
            let parts = line[line.index(after: colon)...].split(separator: " ", omittingEmptySubsequences: true)
                .flatMap { $0.split(separator: "\t") }
            guard let number = parts.first.flatMap({ UInt64($0) }) else { continue }
            let unit = parts.count > 1 ? parts[1].lowercased() : ""
            let scale: UInt64 = switch unit {
            case "kb": 1024
            case "mb": 1024 * 1024
            case "gb": 1024 * 1024 * 1024
            default: 1
            }
            fields[name] = number.multipliedReportingOverflow(by: scale).overflow ? .max : number * scale
        }
        guard let resident = fields["VmRSS"] else { return nil }
        return ProcessMemory(resident: resident, peak: max(fields["VmHWM"] ?? resident, resident),
                             anonymous: fields["RssAnon"] ?? 0, file: fields["RssFile"] ?? 0, shared: fields["RssShmem"] ?? 0)
    }

    /// Reads /proc/PID/status. Nil when the process is gone or holds no user memory.
    public static func read(pid: Int32, proc: String = "/proc") -> ProcessMemory? {
        guard let text = try? String(contentsOfFile: "\(proc)/\(pid)/status", encoding: .utf8) else { return nil }
        return parse(status: text)
    }

    /// The process and all its descendants together (vLLM and SGLang run their workers as
    /// children). Nil when the process itself is gone.
    public static func readTree(pid: Int32, proc: String = "/proc") -> ProcessMemory? {
        guard let own = read(pid: pid, proc: proc) else { return nil }
        return descendants(of: pid, proc: proc).reduce(own) { sum, child in sum + (read(pid: child, proc: proc) ?? .zero) }
    }

    /// Every descendant of `pid`, found from the parent ids in /proc/*/stat.
    public static func descendants(of pid: Int32, proc: String = "/proc") -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: proc)) ?? []
        var parents: [Int32: Int32] = [:]
        for entry in entries {
            guard let child = Int32(entry),
                  let stat = try? String(contentsOfFile: "\(proc)/\(entry)/stat", encoding: .utf8),
                  let parent = parentPID(stat: stat)
            else { continue }
            parents[child] = parent
        }
        return descendants(of: pid, parents: parents)
    }

    /// The descendants of `pid` in a child → parent table, each once (a cycle in a stale table ends).
    static func descendants(of pid: Int32, parents: [Int32: Int32]) -> [Int32] {
        var children: [Int32: [Int32]] = [:]
        for (child, parent) in parents where child != parent { children[parent, default: []].append(child) }
        var found: [Int32] = []
        var seen: Set<Int32> = [pid]
        var queue = [pid]
        while let next = queue.popLast() {
            for child in (children[next] ?? []).sorted() where seen.insert(child).inserted {
                found.append(child)
                queue.append(child)
            }
        }
        return found
    }

    /// The parent pid from the text of /proc/PID/stat: "pid (comm) state ppid …". The command
    /// name may hold spaces and parentheses, so the fields are counted from the last ')'.
    static func parentPID(stat text: String) -> Int32? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count >= 2 ? Int32(fields[1]) : nil
    }
}
