using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// The external peer of issue #3: the same cross-node topology with nginx (stream module) doing the
/// TLS. nginx on node1 accepts the client's plaintext and originates mutual TLS 1.3 to nginx on node2,
/// which terminates it and forwards to the server pod. Both run in their node's netns (the nodes'
/// agents do not capture node processes, and the pods involved are not in the inventory).
/// <code>
///  client-direct ─► node1 nginx :2xxxx ══TLS 1.3, ECDSA P-256, client cert══► node2 nginx :3xxxx ─► server-direct
/// </code>
/// Certificates come from a throwaway CA made here (ECDSA P-256, as the agents' SVIDs); node1
/// verifies node2's name and node2 requires node1's client certificate, like mTLS between agents.
/// No SNI, like HBONE. <c>proxy_half_close on</c>, as the agents: a client that shuts down its
/// sending side still gets the reply (nginx's default closes the whole session). Everything else is
/// nginx's default (16 KiB proxy buffers, TCP_NODELAY on, TLS session reuse to the upstream on).
/// </summary>
internal sealed class BenchNginxPeer : IAsyncDisposable
{
    private const string ModulePath = "/usr/lib/nginx/modules/ngx_stream_module.so";
    private const int FrontOffset = 20000;
    private const int BackOffset = 30000;

    private readonly string _dir;
    private readonly ClusterNode _front;
    private readonly ClusterNode _back;
    private readonly List<ManagedProcess> _masters = [];

    private BenchNginxPeer(string dir, ClusterNode front, ClusterNode back)
    {
        _dir = dir;
        _front = front;
        _back = back;
    }

    public static string? Missing()
    {
        if (!File.Exists("/usr/sbin/nginx"))
        {
            return "nginx is not installed: run agent/bench.sh, or apt-get install nginx libnginx-mod-stream";
        }

        return File.Exists(ModulePath) ? null : $"nginx's stream module is missing ({ModulePath}): apt-get install libnginx-mod-stream";
    }

    /// <summary>Where a client dials to reach <paramref name="serverPort"/> on the server pod through the two proxies.</summary>
    public (string Host, int Port) Front(int serverPort) => (_front.Address.ToString(), serverPort + FrontOffset);

    /// <summary>Lines in node2's access log: one per connection that arrived over TLS ("TLSv1.3 SUCCESS ..." when it did right).</summary>
    public IReadOnlyList<string> BackLog()
    {
        var path = Path.Join(_dir, "node2-access.log");
        return File.Exists(path) ? File.ReadAllLines(path) : [];
    }

    /// <summary>Processes of both nginx instances, masters and workers: for their CPU time.</summary>
    public IEnumerable<int> Pids() => _masters.Where(m => !m.HasExited).SelectMany(m => Children(m.Pid).Prepend(m.Pid));

    public static async Task<BenchNginxPeer> StartAsync(ClusterNode front, ClusterNode back, IPAddress server, IReadOnlyList<int> serverPorts)
    {
        var dir = Directory.CreateTempSubdirectory("weft-bench-nginx-").FullName;
        var peer = new BenchNginxPeer(dir, front, back);
        try
        {
            WriteCertificates(dir, back.Name);
            var frontServers = string.Join("\n", serverPorts.Select(p => $$"""
                    server {
                        listen {{front.Address}}:{{p + FrontOffset}};
                        proxy_pass {{back.Address}}:{{p + BackOffset}};
                        proxy_ssl on;
                        proxy_ssl_protocols TLSv1.3;
                        proxy_ssl_certificate {{dir}}/node1.pem;
                        proxy_ssl_certificate_key {{dir}}/node1.key;
                        proxy_ssl_verify on;
                        proxy_ssl_trusted_certificate {{dir}}/ca.pem;
                        proxy_ssl_name {{back.Name}};
                        proxy_half_close on;
                    }
                """));
            var backServers = string.Join("\n", serverPorts.Select(p => $$"""
                    server {
                        listen {{back.Address}}:{{p + BackOffset}} ssl;
                        ssl_protocols TLSv1.3;
                        ssl_certificate {{dir}}/node2.pem;
                        ssl_certificate_key {{dir}}/node2.key;
                        ssl_verify_client on;
                        ssl_client_certificate {{dir}}/ca.pem;
                        proxy_pass {{server}}:{{p}};
                        proxy_half_close on;
                        access_log {{dir}}/node2-access.log tls;
                    }
                """));
            peer.Start(front, "node1", frontServers);
            peer.Start(back, "node2", backServers);
            foreach (var (node, port) in serverPorts.Select(p => (front, p + FrontOffset)).Concat(serverPorts.Select(p => (back, p + BackOffset))))
            {
                await WaitForListenerAsync(peer, node, port);
            }

            return peer;
        }
        catch
        {
            await peer.DisposeAsync();
            throw;
        }
    }

    private void Start(ClusterNode node, string name, string servers)
    {
        var config = Path.Join(_dir, $"{name}.conf");
        File.WriteAllText(config, $$"""
            load_module {{ModulePath}};
            daemon off;
            worker_processes auto;
            pid {{_dir}}/{{name}}.pid;
            error_log {{_dir}}/{{name}}-error.log warn;
            events { worker_connections 16384; }
            stream {
                log_format tls '$ssl_protocol $ssl_client_verify $remote_addr $bytes_received $bytes_sent $ssl_session_reused';
                access_log off;
            {{servers}}
            }

            """);
        _masters.Add(node.StartProcess("/usr/sbin/nginx", "-p", _dir, "-c", config, "-e", Path.Join(_dir, $"{name}-error.log")));
    }

    private static async Task WaitForListenerAsync(BenchNginxPeer peer, ClusterNode node, int port)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (HostCommand.Run("nsenter", $"--net={node.NetnsPath}", "--", "ss", "-Hltn", $"sport = :{port}").Trim().Length == 0)
        {
            if (peer._masters.FirstOrDefault(m => m.HasExited) is { } dead)
            {
                throw new InvalidOperationException($"{dead} exited with {dead.ExitCode}:\n{dead.Stderr}\n{ErrorLog(peer._dir)}");
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"nginx does not listen on {node.Name}:{port} after 20 s:\n{ErrorLog(peer._dir)}");
            }

            await Task.Delay(100);
        }
    }

    private static string ErrorLog(string dir) =>
        string.Join("\n", Directory.EnumerateFiles(dir, "*-error.log").Select(f => $"{Path.GetFileName(f)}: {File.ReadAllText(f)}"));

    /// <summary>A CA, a server certificate for node2 (DNS SAN = its name) and a client certificate for node1, all ECDSA P-256.</summary>
    private static void WriteCertificates(string dir, string backName)
    {
        var now = DateTimeOffset.UtcNow;
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=weft bench nginx peer CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        using var ca = caRequest.CreateSelfSigned(now.AddHours(-1), now.AddDays(1));
        File.WriteAllText(Path.Join(dir, "ca.pem"), ca.ExportCertificatePem());

        void Leaf(string name, string? dnsName, Oid usage, int serial)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([usage], false));
            if (dnsName != null)
            {
                var san = new SubjectAlternativeNameBuilder();
                san.AddDnsName(dnsName);
                request.CertificateExtensions.Add(san.Build());
            }

            using var certificate = request.Create(ca, now.AddHours(-1), now.AddDays(1), BitConverter.GetBytes(serial));
            File.WriteAllText(Path.Join(dir, $"{name}.pem"), certificate.ExportCertificatePem() + "\n");
            File.WriteAllText(Path.Join(dir, $"{name}.key"), key.ExportPkcs8PrivateKeyPem() + "\n");
        }

        Leaf("node2", backName, new Oid("1.3.6.1.5.5.7.3.1"), 2);
        Leaf("node1", null, new Oid("1.3.6.1.5.5.7.3.2"), 3);
    }

    private static IEnumerable<int> Children(int pid)
    {
        var path = $"/proc/{pid}/task/{pid}/children";
        var text = File.Exists(path) ? TryRead(path) : "";
        return text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(p => int.Parse(p, CultureInfo.InvariantCulture)).ToArray();
    }

    private static string TryRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>SIGTERM to each master (it stops its workers), then SIGKILL by pid to any worker left behind.</summary>
    public async ValueTask DisposeAsync()
    {
        var workers = _masters.Where(m => !m.HasExited).SelectMany(m => Children(m.Pid)).ToList();
        foreach (var master in _masters)
        {
            master.Stop();
        }

        foreach (var master in _masters)
        {
            try
            {
                await master.WaitForExitAsync(TimeSpan.FromSeconds(5));
            }
            catch (TimeoutException)
            {
                master.Kill();
            }
            catch (HarnessException)
            {
                // already released by the cluster's teardown
            }

            await master.DisposeAsync();
        }

        // only pids that still are nginx: a pid freed by an exited worker could have been reused
        foreach (var worker in workers.Where(w => TryRead($"/proc/{w}/comm").Trim() == "nginx"))
        {
            Tmds.Linux.LibC.kill(worker, Tmds.Linux.LibC.SIGKILL);
        }

        Directory.Delete(_dir, recursive: true);
    }
}
