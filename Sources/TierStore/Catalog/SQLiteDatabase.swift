import CSQLite3

/// The one place SQLite is called from. `run` keeps the statements it prepares for the next
/// call with the same text: the catalog's commits run the same few statements, thousands of
/// times a second under durable writes, and parsing them each time was most of a commit's CPU.
final class SQLiteDatabase {
    struct Error: Swift.Error, CustomStringConvertible {
        var code: Int32
        var message: String
        var description: String { "sqlite error \(code): \(message)" }
    }

    private var handle: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]

    init(path: String) throws {
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(handle)
            throw Error(code: rc, message: "\(path): \(message)")
        }
        sqlite3_busy_timeout(handle, 5000)
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    func execute(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &error)
        guard rc == SQLITE_OK else {
            let message = error.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(error)
            throw Error(code: rc, message: message)
        }
    }

    /// Runs `sql` once per row of `rows`, binding each row's values to ?1, ?2, … (nothing for
    /// no rows). `sql` is a single statement: any text after its first semicolon is ignored.
    func run(_ sql: String, rows: [[any SQLiteBindable]]) throws {
        guard !rows.isEmpty else { return }
        let statement = try prepared(sql)
        // Reset when done, so that the kept statement holds no lock or transaction open.
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for row in rows {
            sqlite3_reset(statement)
            for (index, value) in row.enumerated() { value.bind(to: statement, at: Int32(index + 1)) }
            let rc = sqlite3_step(statement)
            guard rc == SQLITE_DONE else { try check(rc) ; return }
        }
    }

    /// Runs one statement with no parameters (`BEGIN`, `COMMIT`), kept prepared as `run`'s are.
    func step(_ sql: String) throws {
        try run(sql, rows: [[]])
    }

    private func prepared(_ sql: String) throws -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        try check(sqlite3_prepare_v2(handle, sql, -1, &statement, nil))
        guard let statement else { throw Error(code: SQLITE_MISUSE, message: "no statement in \(sql)") }
        statements[sql] = statement
        return statement
    }

    /// All rows of a query, as integers.
    func query(_ sql: String, columns: Int) throws -> [[Int64]] {
        var statement: OpaquePointer?
        try check(sqlite3_prepare_v2(handle, sql, -1, &statement, nil))
        defer { sqlite3_finalize(statement) }
        var rows: [[Int64]] = []
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { try check(rc); break }
            rows.append((0..<columns).map { sqlite3_column_int64(statement, Int32($0)) })
        }
        return rows
    }

    /// Rows whose first `texts` columns are text and the next `integers` columns integers.
    func query(_ sql: String, texts: Int, integers: Int) throws -> [(texts: [String], integers: [Int64])] {
        var statement: OpaquePointer?
        try check(sqlite3_prepare_v2(handle, sql, -1, &statement, nil))
        defer { sqlite3_finalize(statement) }
        var rows: [(texts: [String], integers: [Int64])] = []
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { try check(rc); break }
            rows.append((
                (0..<texts).map { sqlite3_column_text(statement, Int32($0)).map { String(cString: $0) } ?? "" },
                (0..<integers).map { sqlite3_column_int64(statement, Int32(texts + $0)) }))
        }
        return rows
    }

    private func check(_ rc: Int32) throws {
        guard rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE else {
            throw Error(code: rc, message: String(cString: sqlite3_errmsg(handle)))
        }
    }
}

/// A value `SQLiteDatabase.run` can bind to a statement parameter.
protocol SQLiteBindable {
    func bind(to statement: OpaquePointer?, at index: Int32)
}

extension Int64: SQLiteBindable {
    func bind(to statement: OpaquePointer?, at index: Int32) { sqlite3_bind_int64(statement, index, self) }
}

extension String: SQLiteBindable {
    func bind(to statement: OpaquePointer?, at index: Int32) {
        // SQLITE_TRANSIENT: SQLite copies the text before this call returns.
        sqlite3_bind_text(statement, index, self, -1, unsafeBitCast(-1, to: sqlite3_destructor_type.self))
    }
}
