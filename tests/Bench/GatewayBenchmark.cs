using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// Issue 12's benchmark: 1 KiB HTTP responses from one backend (nginx answering from memory), requested with
/// <c>wrk</c> (HTTP/1.1 keep-alive) and <c>h2load</c> (HTTP/2 over TLS), directly, through <c>weft gateway</c>,
/// and through nginx configured as a reverse proxy to the same backend; with and without TLS at the edge. Then
/// each proxy's memory per 1,000 idle keep-alive client connections. Everything on 127.0.0.1, no root.
/// <code>
///  wrk/h2load ─────────────────────────────► backend nginx :B (return 200, 1 KiB)    "direct"
///  wrk/h2load ─► weft gateway :G  (TLS :GS) ─► backend                               "weft"
///  wrk/h2load ─► nginx proxy :N   (TLS :NS) ─► backend (upstream keepalive)          "nginx"
/// </code>
/// </summary>
internal static partial class GatewayBenchmark
{
    public const string Usage = """
        weft-bench --suite gateway [--seconds T] [--connections 16,256] [--idle-connections 10000] [--json FILE]
          The gateway (issue 12), on 127.0.0.1: 1 KiB responses from an nginx backend, directly, through
          weft gateway and through nginx as a reverse proxy; HTTP/1.1 keep-alive with wrk (plain and TLS
          at the edge) at each connection count, HTTP/2 over TLS with h2load (10 streams per connection);
          requests/s, p50/p99 (wrk), ratios against direct and nginx; then RSS per 1,000 idle keep-alive
          connections of the gateway and of nginx. Needs wrk, h2load (nghttp2-client) and nginx
          (agent/bench.sh installs them). T defaults to 10 s.
        """;

    private static readonly string Payload = new('w', 1024);

    public static async Task<int> RunAsync(CommandLine cl)
    {
        cl.Get("suite");
        var seconds = cl.Int("seconds", 10);
        var connections = (cl.Get("connections") ?? "16,256").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(c => int.TryParse(c, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new UsageException($"--connections wants positive numbers, got '{c}'")).ToList();
        var idle = cl.Int("idle-connections", 10_000);
        var jsonPath = cl.Get("json");
        cl.RejectUnknown();
        if (seconds < 1 || idle < 1 || connections.Count == 0)
        {
            throw new UsageException("--seconds and --idle-connections must be at least 1, --connections must name one count or more");
        }

        foreach (var tool in new[] { "wrk", "h2load", "/usr/sbin/nginx", "/usr/bin/python3" })
        {
            if (Which(tool) is null)
            {
                Console.Error.WriteLine($"weft-bench: {tool} is not installed: run agent/bench.sh (apt-get install wrk nghttp2-client nginx)");
                return 1;
            }
        }

        using var interrupt = new BenchInterrupt("stopping, cleaning up");
        var stop = interrupt.Token;
        var dir = Directory.CreateTempSubdirectory("weft-bench-gateway-").FullName;
        var processes = new List<Process>();
        try
        {
            var ports = FreePorts(7);
            var (backend, gatewayHttp, gatewayHttps, gatewayAdmin, nginxHttp, nginxHttps, _) = (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]);
            WriteCertificate(dir);
            await File.WriteAllTextAsync(Path.Join(dir, "gateway.yaml"), Inventory(dir, backend));
            await File.WriteAllTextAsync(Path.Join(dir, "backend.conf"), NginxConfig(dir, "backend", "1", $$"""
                    server {
                        listen 127.0.0.1:{{backend}} backlog=4096;
                        default_type application/octet-stream;
                        location / { return 200 "{{Payload}}"; }
                    }
                """));
            await File.WriteAllTextAsync(Path.Join(dir, "proxy.conf"), NginxConfig(dir, "proxy", "auto", $$"""
                    upstream backend { server 127.0.0.1:{{backend}}; keepalive 512; }
                    server {
                        listen 127.0.0.1:{{nginxHttp}} backlog=4096;
                        listen 127.0.0.1:{{nginxHttps}} ssl http2 backlog=4096;
                        ssl_certificate {{dir}}/edge.pem;
                        ssl_certificate_key {{dir}}/edge.key;
                        ssl_protocols TLSv1.2 TLSv1.3;
                        location / {
                            proxy_pass http://backend;
                            proxy_http_version 1.1;
                            proxy_set_header Connection "";
                            proxy_set_header Host $host;
                            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                            proxy_set_header X-Forwarded-Proto $scheme;
                        }
                    }
                """));

            Start(processes, "/usr/sbin/nginx", ["-p", dir, "-c", Path.Join(dir, "backend.conf"), "-e", Path.Join(dir, "backend-error.log")]);
            var nginx = Start(processes, "/usr/sbin/nginx", ["-p", dir, "-c", Path.Join(dir, "proxy.conf"), "-e", Path.Join(dir, "proxy-error.log")]);
            var (file, args) = WeftExecutable.Command(["gateway", "--inventory", Path.Join(dir, "gateway.yaml"),
                "--http", $"127.0.0.1:{gatewayHttp}", "--https", $"127.0.0.1:{gatewayHttps}", "--admin", $"127.0.0.1:{gatewayAdmin}",
                "--max-connections", (idle + 1000).ToString(CultureInfo.InvariantCulture)]);
            var gateway = Start(processes, file, args);
            foreach (var port in new[] { backend, gatewayHttp, gatewayHttps, nginxHttp, nginxHttps })
            {
                await WaitForListenerAsync(port, processes, dir);
            }

            Console.WriteLine($"gateway bench: {Environment.ProcessorCount} cores, {seconds} s per run, 1 KiB responses; weft gateway pid {gateway.Id}, nginx master pid {nginx.Id}");
            // Warm-up, not counted: the gateway's first requests pay for JIT compilation and connection pools.
            foreach (var url in new[] { $"http://127.0.0.1:{gatewayHttp}/", $"https://127.0.0.1:{gatewayHttps}/", $"http://127.0.0.1:{nginxHttp}/" })
            {
                await RunToolAsync("wrk", ["-t", "1", "-c", "4", "-d", "3s", url], 3, stop);
            }

            // Idle memory before the load runs: after them both processes hold memory they grew into, and idle
            // connections fit into it without moving RSS (a first version measured after them and read 0).
            var weftMemory = await IdleMemoryAsync("weft gateway", gatewayHttp, idle, () => [gateway.Id], stop);
            var nginxMemory = await IdleMemoryAsync("nginx proxy", nginxHttp, idle, () => NginxPids(nginx.Id), stop);

            var rows = new List<Row>();
            foreach (var c in connections)
            {
                foreach (var (tls, scheme, weftPort, nginxPort) in new[] { (false, "http", gatewayHttp, nginxHttp), (true, "https", gatewayHttps, nginxHttps) })
                {
                    if (!tls)
                    {
                        rows.Add(await WrkAsync("direct", $"http://127.0.0.1:{backend}/", c, seconds, tls, stop));
                    }

                    rows.Add(await WrkAsync("weft", $"{scheme}://127.0.0.1:{weftPort}/", c, seconds, tls, stop));
                    rows.Add(await WrkAsync("nginx", $"{scheme}://127.0.0.1:{nginxPort}/", c, seconds, tls, stop));
                }

                rows.Add(await H2loadAsync("weft", $"https://127.0.0.1:{gatewayHttps}/", c, seconds, stop));
                rows.Add(await H2loadAsync("nginx", $"https://127.0.0.1:{nginxHttps}/", c, seconds, stop));
            }

            Console.WriteLine();
            Console.WriteLine($"{"path",-7} {"protocol",-9} {"edge",-5} {"conns",5} {"req/s",10} {"p50 ms",8} {"p99 ms",8} {"errors",7} {"vs direct",9} {"vs nginx",8}");
            foreach (var row in rows)
            {
                var direct = rows.FirstOrDefault(r => r.Path == "direct" && r.Connections == row.Connections && r.Protocol == "HTTP/1.1");
                var nginxRow = rows.FirstOrDefault(r => r.Path == "nginx" && r.Connections == row.Connections && r.Protocol == row.Protocol && r.Tls == row.Tls);
                Console.WriteLine($"{row.Path,-7} {row.Protocol,-9} {(row.Tls ? "TLS" : "plain"),-5} {row.Connections,5} {row.RequestsPerSecond,10:0} {Ms(row.P50),8} {Ms(row.P99),8} {row.Errors,7} " +
                    $"{Ratio(row.RequestsPerSecond, direct?.RequestsPerSecond),9} {Ratio(row.RequestsPerSecond, nginxRow?.RequestsPerSecond),8}");
            }

            Console.WriteLine();
            var targets = new List<string>();
            foreach (var row in rows.Where(r => r.Path == "weft"))
            {
                var peer = rows.First(r => r.Path == "nginx" && r.Connections == row.Connections && r.Protocol == row.Protocol && r.Tls == row.Tls);
                targets.Add($"{row.Protocol} {(row.Tls ? "TLS" : "plain")} c={row.Connections}: req/s >= nginx's {(row.RequestsPerSecond >= peer.RequestsPerSecond ? "met" : "NOT met")}"
                    + (row.P99 is { } p99 && peer.P99 is { } peerP99 ? $", p99 <= nginx's {(p99 <= peerP99 ? "met" : "NOT met")}" : ""));
            }

            Console.WriteLine("targets (issue 12: requests/s at least nginx's, p99 at most nginx's):");
            targets.ForEach(t => Console.WriteLine($"  {t}"));
            if (jsonPath is not null)
            {
                var json = new JsonObject
                {
                    ["suite"] = "gateway",
                    ["cores"] = Environment.ProcessorCount,
                    ["seconds"] = seconds,
                    ["runs"] = new JsonArray([.. rows.Select(r => (JsonNode)new JsonObject
                    {
                        ["path"] = r.Path, ["protocol"] = r.Protocol, ["tls"] = r.Tls, ["connections"] = r.Connections,
                        ["requests_per_second"] = Math.Round(r.RequestsPerSecond, 1), ["p50_ms"] = r.P50, ["p99_ms"] = r.P99, ["errors"] = r.Errors,
                    })]),
                    ["idle_memory"] = new JsonObject { ["weft_kib_per_1000"] = weftMemory, ["nginx_kib_per_1000"] = nginxMemory, ["connections"] = idle },
                };
                await File.WriteAllTextAsync(jsonPath, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }

            return rows.Any(r => r.Errors > 0) ? 1 : 0;
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            return 130;
        }
        finally
        {
            foreach (var process in processes.Where(p => !p.HasExited))
            {
                // SIGTERM: nginx's master stops its workers, the gateway drains.
                Tmds.Linux.LibC.kill(process.Id, Tmds.Linux.LibC.SIGTERM);
                if (!process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    process.Kill();
                }
            }

            processes.ForEach(p => p.Dispose());
            Directory.Delete(dir, recursive: true);
        }
    }

    private sealed record Row(string Path, string Protocol, bool Tls, int Connections, double RequestsPerSecond, double? P50, double? P99, long Errors);

    private static string Ms(double? ms) => ms is { } v ? v.ToString("0.00", CultureInfo.InvariantCulture) : "-";

    private static string Ratio(double value, double? of) => of is > 0 ? (value / of.Value).ToString("0.00", CultureInfo.InvariantCulture) : "-";

    private static async Task<Row> WrkAsync(string path, string url, int connections, int seconds, bool tls, CancellationToken stop)
    {
        var threads = Math.Min(connections, Environment.ProcessorCount);
        var text = await RunToolAsync("wrk", ["-t", threads.ToString(CultureInfo.InvariantCulture), "-c", connections.ToString(CultureInfo.InvariantCulture),
            "-d", $"{seconds}s", "--latency", url], seconds, stop);
        var rate = double.Parse(WrkRate().Match(text) is { Success: true } m ? m.Groups[1].Value : "0", CultureInfo.InvariantCulture);
        var errors = WrkErrors().Matches(text).Sum(e => long.Parse(e.Groups[1].Value, CultureInfo.InvariantCulture))
            + (WrkNon2xx().Match(text) is { Success: true } n ? long.Parse(n.Groups[1].Value, CultureInfo.InvariantCulture) : 0)
            + (rate > 0 ? 0 : 1);
        var row = new Row(path, "HTTP/1.1", tls, connections, rate, WrkPercentile(text, "50%"), WrkPercentile(text, "99%"), errors);
        Console.WriteLine($"  wrk {path} {(tls ? "TLS" : "plain")} c={connections}: {rate:0} req/s, p50 {Ms(row.P50)} ms, p99 {Ms(row.P99)} ms{(errors > 0 ? $", {errors} errors" : "")}");
        return row;
    }

    private static async Task<Row> H2loadAsync(string path, string url, int connections, int seconds, CancellationToken stop)
    {
        var text = await RunToolAsync("h2load", ["-c", connections.ToString(CultureInfo.InvariantCulture), "-m", "10",
            "-t", Math.Min(connections, Environment.ProcessorCount).ToString(CultureInfo.InvariantCulture), "-D", seconds.ToString(CultureInfo.InvariantCulture), url], seconds, stop);
        var rate = H2loadRate().Match(text) is { Success: true } m ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
        var failed = H2loadFailed().Match(text) is { Success: true } f ? long.Parse(f.Groups[1].Value, CultureInfo.InvariantCulture) : -1;
        var mean = H2loadMean().Match(text) is { Success: true } l ? ToMs(l.Groups[1].Value, l.Groups[2].Value) : null;
        if (!text.Contains("application protocol: h2", StringComparison.OrdinalIgnoreCase))
        {
            failed = Math.Max(failed, 1);
            Console.WriteLine($"  h2load {path}: HTTP/2 was not negotiated:\n{text}");
        }

        Console.WriteLine($"  h2load {path} TLS c={connections} m=10: {rate:0} req/s, mean {Ms(mean)} ms{(failed != 0 ? $", {failed} failed" : "")}");
        return new Row(path, "HTTP/2", true, connections, rate, mean, null, Math.Max(failed, 0));
    }

    private static double? WrkPercentile(string text, string percentile)
    {
        var match = Regex.Match(text, $@"^\s*{Regex.Escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", RegexOptions.Multiline);
        return match.Success ? ToMs(match.Groups[1].Value, match.Groups[2].Value) : null;
    }

    private static double? ToMs(string value, string unit)
    {
        var v = double.Parse(value, CultureInfo.InvariantCulture);
        return unit switch { "us" => v / 1000, "ms" => v, "s" => v * 1000, _ => null };
    }

    [GeneratedRegex(@"Requests/sec:\s+([\d.]+)")]
    private static partial Regex WrkRate();

    [GeneratedRegex(@"(?:connect|read|write|timeout) (\d+)")]
    private static partial Regex WrkErrors();

    [GeneratedRegex(@"Non-2xx or 3xx responses: (\d+)")]
    private static partial Regex WrkNon2xx();

    [GeneratedRegex(@"finished in [\d.]+s, ([\d.]+) req/s")]
    private static partial Regex H2loadRate();

    [GeneratedRegex(@"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed")]
    private static partial Regex H2loadFailed();

    [GeneratedRegex(@"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)")]
    private static partial Regex H2loadMean();

    private static async Task<string> RunToolAsync(string tool, string[] args, int seconds, CancellationToken stop)
    {
        using var process = Process.Start(new ProcessStartInfo(tool, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(stop);
        limit.CancelAfter(TimeSpan.FromSeconds(seconds + 60));
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
            stop.ThrowIfCancellationRequested();
            throw new TimeoutException($"{tool} did not finish in {seconds + 60} s");
        }

        return await stdout + await stderr;
    }

    /// <summary>RSS of <paramref name="pids"/> before and while <paramref name="count"/> keep-alive connections (one request each) sit idle: KiB per 1,000.</summary>
    private static async Task<double> IdleMemoryAsync(string name, int port, int count, Func<IReadOnlyList<int>> pids, CancellationToken stop)
    {
        await Task.Delay(TimeSpan.FromSeconds(2), stop);
        var before = pids().Sum(RssKib);
        var script = $$"""
            import http.client, resource, sys
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            held = []
            for i in range({{count}}):
                c = http.client.HTTPConnection("127.0.0.1", {{port}}, timeout=60)
                c.request("GET", "/")
                r = c.getresponse()
                r.read()
                held.append(c)
            print("held", len(held), flush=True)
            sys.stdin.readline()
            """;
        using var client = Process.Start(new ProcessStartInfo("/usr/bin/python3", ["-c", script]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true })!;
        try
        {
            var line = await client.StandardOutput.ReadLineAsync(stop).AsTask().WaitAsync(TimeSpan.FromMinutes(10), stop);
            if (line != $"held {count}")
            {
                Console.WriteLine($"  {name}: the idle client stopped: {line} {await client.StandardError.ReadToEndAsync()}");
                return double.NaN;
            }

            await Task.Delay(TimeSpan.FromSeconds(2), stop);
            var loaded = pids().Sum(RssKib);
            var per1000 = (loaded - before) * 1000.0 / count;
            Console.WriteLine($"  {name}: RSS {before / 1024.0:0.0} MiB idle, {loaded / 1024.0:0.0} MiB with {count} idle keep-alive connections: {per1000:0} KiB per 1,000");
            return Math.Round(per1000, 1);
        }
        finally
        {
            client.StandardInput.Close();
            if (!client.WaitForExit(TimeSpan.FromSeconds(stop.IsCancellationRequested ? 1 : 30)))
            {
                client.Kill();
            }
        }
    }

    private static long RssKib(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }

    private static IReadOnlyList<int> NginxPids(int master)
    {
        var children = File.Exists($"/proc/{master}/task/{master}/children") ? File.ReadAllText($"/proc/{master}/task/{master}/children") : "";
        return [master, .. children.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(p => int.Parse(p, CultureInfo.InvariantCulture))];
    }

    private static Process Start(List<Process> processes, string file, IReadOnlyList<string> args)
    {
        var process = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = false, RedirectStandardError = false })!;
        processes.Add(process);
        return process;
    }

    private static async Task WaitForListenerAsync(int port, List<Process> processes, string dir)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            try
            {
                using var tcp = new System.Net.Sockets.TcpClient();
                await tcp.ConnectAsync(System.Net.IPAddress.Loopback, port);
                return;
            }
            catch (System.Net.Sockets.SocketException) when (DateTime.UtcNow < deadline && processes.All(p => !p.HasExited))
            {
                await Task.Delay(100);
            }
            catch (System.Net.Sockets.SocketException)
            {
                var logs = string.Join("\n", Directory.EnumerateFiles(dir, "*-error.log").Select(File.ReadAllText));
                throw new InvalidOperationException($"nothing listens on 127.0.0.1:{port}; {string.Join(", ", processes.Where(p => p.HasExited).Select(p => $"pid {p.Id} exited {p.ExitCode}"))}\n{logs}");
            }
        }
    }

    private static List<int> FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0)).ToList();
        listeners.ForEach(l => l.Start());
        var ports = listeners.Select(l => ((System.Net.IPEndPoint)l.LocalEndpoint).Port).ToList();
        listeners.ForEach(l => l.Stop());
        return ports;
    }

    private static string? Which(string tool) =>
        tool.StartsWith('/') ? (File.Exists(tool) ? tool : null)
        : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Join(d, tool)).FirstOrDefault(File.Exists);

    /// <summary>One ECDSA P-256 certificate for both proxies' TLS edge.</summary>
    private static void WriteCertificate(string dir)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=bench.example", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("bench.example");
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(1));
        File.WriteAllText(Path.Join(dir, "edge.pem"), certificate.ExportCertificatePem() + "\n");
        File.WriteAllText(Path.Join(dir, "edge.key"), key.ExportPkcs8PrivateKeyPem() + "\n");
    }

    private static string Inventory(string dir, int backend) => Inventory(backend, File.ReadAllText(Path.Join(dir, "edge.pem")), File.ReadAllText(Path.Join(dir, "edge.key")));

    private static string Inventory(int backend, string certificatePem, string keyPem) => $$"""
        apiVersion: v1
        kind: Service
        metadata: {name: backend, namespace: default}
        spec: {ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: backend-1, namespace: default, labels: {kubernetes.io/service-name: backend} }
        addressType: IPv4
        ports: [{name: http, port: {{backend}}, protocol: TCP}]
        endpoints: [{addresses: [127.0.0.1], conditions: {ready: true} }]
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: edge-tls, namespace: default}
        type: kubernetes.io/tls
        stringData:
          tls.crt: |
        {{Indent(certificatePem, 4)}}
          tls.key: |
        {{Indent(keyPem, 4)}}
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: backend, namespace: default}
        spec:
          ingressClassName: weft
          tls: [{secretName: edge-tls}]
          rules:
          - http:
              paths:
              - {pathType: Prefix, path: /, backend: {service: {name: backend, port: {number: 80} } } }

        """;

    private static string Indent(string text, int spaces) => string.Join('\n', text.TrimEnd('\n').Split('\n').Select(l => new string(' ', spaces) + l));

    /// <summary>
    /// An nginx instance: the backend (one worker, answering from memory) or the reverse proxy (a worker per core,
    /// HTTP/1.1 keep-alive to the backend, TLS 1.2/1.3 and HTTP/2 at the edge with the gateway's certificate);
    /// no access log, as the gateway runs without one; nothing tuned beyond nginx's documented proxy settings.
    /// </summary>
    private static string NginxConfig(string dir, string name, string workers, string servers) => $$"""
        daemon off;
        worker_processes {{workers}};
        pid {{dir}}/{{name}}.pid;
        error_log {{dir}}/{{name}}-error.log warn;
        worker_rlimit_nofile 65536;
        events { worker_connections 32768; }
        http {
            access_log off;
            client_body_temp_path {{dir}}/{{name}}-body;
            proxy_temp_path {{dir}}/{{name}}-proxy;
            fastcgi_temp_path {{dir}}/{{name}}-fastcgi;
            uwsgi_temp_path {{dir}}/{{name}}-uwsgi;
            scgi_temp_path {{dir}}/{{name}}-scgi;
            keepalive_requests 1000000;
        {{servers}}
        }

        """;
}
