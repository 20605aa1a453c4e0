/// Runs `body(i)` for i in 0..<count on `workers` concurrent tasks, each taking the next index
/// as it frees up (a bounded queue depth, not one task per item); collects the results in no
/// particular order. The first error cancels the rest and is rethrown.
enum Parallel {
    static func run<T: Sendable>(
        workers: Int, count: Int, _ body: @escaping @Sendable (Int) async throws -> T
    ) async throws -> [T] {
        let next = IOBenchmark.Counter()
        return try await withThrowingTaskGroup(of: [T].self) { group in
            for _ in 0..<max(1, min(workers, count)) {
                group.addTask {
                    var results: [T] = []
                    while let i = next.take(below: count) {
                        try Task.checkCancellation()
                        results.append(try await body(i))
                    }
                    return results
                }
            }
            var all: [T] = []
            for try await results in group { all += results }
            return all
        }
    }
}
