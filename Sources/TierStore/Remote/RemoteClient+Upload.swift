import Glibc

extension RemoteClient {
    /// Uploads a file. Below `multipartThreshold` (or for http, always) one PUT streamed from the
    /// file; above it for s3, a multipart upload. file: destinations are copied via a ".part" file.
    public func upload(file path: String, to location: RemoteLocation) async throws {
        let fd: Int32
        switch FileIO.open(path, flags: O_RDONLY) {
        case .success(let opened): fd = opened
        case .failure(let error):
            throw RemoteError(error.code == ENOENT ? .notFound : .transport, url: location.description,
                              "upload \(path): open: \(FileIO.describe(error.code))")
        }
        defer { FileIO.close(fd) }
        guard case .success(let size) = FileIO.fstatSize(fd) else {
            throw RemoteError(.transport, url: location.description, "upload \(path): fstat: \(FileIO.describe(errno))")
        }
        try await upload(.file(descriptor: fd, size: size), to: location)
    }

    public func upload(bytes: UnsafeRawBufferPointer, to location: RemoteLocation) async throws {
        try await upload(.memory(bytes), to: location)
    }

    func upload(_ body: UploadBody, to location: RemoteLocation) async throws {
        switch location {
        case .file(let path):
            try await copy(body, toFile: path, display: location.description)
        case .http:
            _ = try await exchange(location: location, method: "PUT", payloadHash: SigV4Signer.unsignedPayload,
                                   upload: body.slice(offset: 0, length: body.size))
        case .s3(let bucket, let key):
            if body.size >= UInt64(settings.multipartThreshold) && body.size > UInt64(settings.partBytes) {
                try await multipartUpload(body, bucket: bucket, key: key)
            } else {
                _ = try await exchange(location: location, method: "PUT", payloadHash: SigV4Signer.unsignedPayload,
                                       upload: body.slice(offset: 0, length: body.size))
            }
        }
    }

    /// S3 multipart: CreateMultipartUpload, `parallelism` UploadParts at once (each retried by
    /// `exchange`), CompleteMultipartUpload; AbortMultipartUpload on any failure so no parts are
    /// left behind to be billed.
    private func multipartUpload(_ body: UploadBody, bucket: String, key: String) async throws {
        let location = RemoteLocation.s3(bucket: bucket, key: key)
        let partSize = UInt64(settings.partBytes)
        let parts = Int((body.size + partSize - 1) / partSize)
        guard parts <= 10_000 else {
            throw RemoteError(.unsupported, url: location.description,
                              "upload \(location): \(body.size) bytes need \(parts) parts of \(partSize); S3 allows 10,000: raise partBytes")
        }
        let created = try await exchange(location: location, method: "POST", query: [("uploads", "")],
                                         upload: UploadBody.owned([]).slice(offset: 0, length: 0))
        guard let uploadID = S3XML.value(of: "UploadId", in: created.body) else {
            throw RemoteError(.transport, url: location.description,
                              "POST \(location)?uploads: no UploadId in the answer")
        }
        do {
            var etags = [String](repeating: "", count: parts)
            try await withThrowingTaskGroup(of: (Int, String).self) { group in
                var next = 0
                func launch() {
                    let number = next + 1
                    let offset = UInt64(next) * partSize
                    let slice = body.slice(offset: offset, length: min(partSize, body.size - offset))
                    group.addTask {
                        let response = try await self.exchange(
                            location: location, method: "PUT",
                            query: [("partNumber", "\(number)"), ("uploadId", uploadID)],
                            payloadHash: SigV4Signer.unsignedPayload, upload: slice)
                        guard let etag = response.etag else {
                            throw RemoteError(.transport, url: location.description,
                                              "PUT \(location) part \(number): no ETag in the answer")
                        }
                        return (number, etag)
                    }
                    next += 1
                }
                while next < parts && next < settings.parallelism { launch() }
                while let (number, etag) = try await group.next() {
                    etags[number - 1] = etag
                    if next < parts { launch() }
                }
            }
            var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            for (index, etag) in etags.enumerated() {
                xml += "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\(S3XML.escape(etag))</ETag></Part>"
            }
            xml += "</CompleteMultipartUpload>"
            let document = Array(xml.utf8)
            let completed = try await exchange(location: location, method: "POST", query: [("uploadId", uploadID)],
                                               headers: [("Content-Type", "application/xml")],
                                               payloadHash: SHA256Digest.hex(of: document),
                                               upload: UploadBody.owned(document).slice(offset: 0, length: UInt64(document.count)))
            // S3 may answer 200 and still fail the completion in the body.
            if S3XML.value(of: "Code", in: completed.body) != nil {
                throw RemoteError(.transport, url: location.description,
                                  "POST \(location)?uploadId: completion failed: \(S3XML.errorDetail(completed.body))")
            }
        } catch {
            // Not tied to this task: the abort must be sent even when the upload was cancelled.
            let client = self
            _ = try? await Task.detached {
                try await client.exchange(location: location, method: "DELETE", query: [("uploadId", uploadID)])
            }.value
            throw error
        }
    }

    /// Copies into a local path through `path.part`, renamed when complete.
    private func copy(_ body: UploadBody, toFile path: String, display: String) async throws {
        let whole = body.slice(offset: 0, length: body.size)
        let result: Result<Void, RemoteError> = await pool.run { _ in
            let partial = path + ".part"
            guard case .success(let fd) = FileIO.open(partial, flags: O_WRONLY | O_CREAT | O_TRUNC) else {
                return .failure(RemoteError(.transport, url: display, "open \(partial): \(FileIO.describe(errno))"))
            }
            defer { FileIO.close(fd) }
            let source = UploadSource(whole.origin, length: Int64(whole.length))
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { scratch.deallocate() }
            var offset: UInt64 = 0
            while true {
                let n = source.fill(scratch)
                if n == 0 { break }
                if n < 0 { return .failure(RemoteError(.transport, url: display, "copy to \(path): \(source.failure ?? "")")) }
                if case .failure(let why) = FileIO.pwriteFully(fd, UnsafeRawBufferPointer(rebasing: scratch[..<Int(n)]), at: offset) {
                    unlink(partial)
                    return .failure(RemoteError(.transport, url: display, "write \(partial): \(why.message)"))
                }
                offset += UInt64(n)
            }
            guard fsync(fd) == 0, rename(partial, path) == 0 else {
                unlink(partial)
                return .failure(RemoteError(.transport, url: display, "finish \(partial) → \(path): \(FileIO.describe(errno))"))
            }
            return .success(())
        }
        try withExtendedLifetime(whole.keepAlive) { try result.get() }
    }
}
