using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using k8s.Models;
using Weft.Ca;
using Weft.Ca.Protocol;
using Weft.Cli;
using Weft.Identity;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Bench;

/// <summary>
/// <c>weft-bench --suite ca</c> (issue 11): the CA service in Kubernetes mode on loopback, against the wire-level
/// fake API server (TokenReviews and the pod watch through KubernetesClient, as in a cluster). Measures the
/// certificates one CA replica issues per second (TokenReview, CSR verify, authorization, sign) and the time an
/// agent's identity manager takes to hold certificates for N service accounts whose pods are on its node.
/// </summary>
internal static class CaBenchmark
{
    public const string Usage = """
        weft-bench --suite ca [--accounts 200] [--clients 16] [--seconds 5] [--repeat 3]
          One CA (weft ca serve --kubernetes, in process, loopback TLS gRPC) against the fake API server:
          certificates issued per second by C concurrent callers for T seconds (each request: a TokenReview,
          CSR verify, the pod-on-node check, signing), then R times the time for a freshly started agent
          identity manager (--ca-token-file) to obtain certificates for N service accounts at once.
          Target (issue 11): N = 200 in under 2 s. The TokenReview is answered by the fake server (a new
          HTTP/1.1 connection per request), so the figures include its cost, not a real API server's.
        """;

    private const string TrustDomain = "cluster.local";
    private const double StartTargetSeconds = 2.0;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var accounts = cl.Int("accounts", 200);
        var clients = cl.Int("clients", 16);
        var seconds = cl.Int("seconds", 5);
        var repeat = cl.Int("repeat", 3);
        cl.RejectUnknown();
        if (accounts < 1 || clients < 1 || seconds < 1 || repeat < 1)
        {
            throw new UsageException("--accounts, --clients, --seconds and --repeat want 1 or more");
        }

        var work = Directory.CreateTempSubdirectory("weft-bench-ca-").FullName;
        try
        {
            await using var api = FakeApiServer.Start();
            api.Apply(Pod("weft-system", "weft-agent-node1", "weft-agent"));
            for (var i = 0; i < accounts; i++)
            {
                api.Apply(Pod("bench", $"app-{i}", $"sa-{i}"));
            }

            using var client = api.Client();
            using var pods = KubernetesPodIndex.Start(client);
            await pods.WaitForListAsync().WaitAsync(TimeSpan.FromMinutes(1));
            var authority = CertificateAuthority.Load(SelfSignedRoot.Write(Path.Combine(work, "root"), TrustDomain));
            var root = authority.TrustBundle[0];
            await using var ca = await CaServer.StartAsync(authority, client, pods, new KubernetesCallerOptions(),
                new CaServerOptions { TrustDomain = TrustDomain, Listen = new IPEndPoint(IPAddress.Loopback, 0), MetricsListen = null });
            var token = api.ServiceAccountToken("weft-system", "weft-agent", pod: "weft-agent-node1", audiences: ["weft-ca"], expires: DateTimeOffset.UtcNow.AddDays(1));

            var perSecond = await IssueRateAsync(ca, root, token, accounts, clients, TimeSpan.FromSeconds(seconds));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"ca issue rate: {perSecond:0.0} certificates/s ({clients} callers, {seconds} s, {accounts} identities; each with a TokenReview)"));

            var tokenFile = Path.Combine(work, "token");
            await File.WriteAllTextAsync(tokenFile, token);
            var bundle = Path.Combine(work, "bundle.crt");
            await File.WriteAllTextAsync(bundle, root.ExportCertificatePem());
            var times = new List<double>();
            for (var r = 0; r < repeat; r++)
            {
                times.Add(await AgentStartAsync(ca, tokenFile, bundle, accounts));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"agent start, run {r + 1}: {accounts} identities in {times[^1]:0.000} s"));
            }

            times.Sort();
            var median = times[times.Count / 2];
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"agent start: median {median:0.000} s for {accounts} identities (target < {StartTargetSeconds} s for 200: {(accounts == 200 ? (median < StartTargetSeconds ? "met" : "MISSED") : "n/a")})"));
            return 0;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>Certificates per second from <paramref name="clients"/> callers on one HTTP/2 connection each; CSRs are made beforehand.</summary>
    private static async Task<double> IssueRateAsync(CaServer ca, X509Certificate2 root, string token, int accounts, int clients, TimeSpan duration)
    {
        var requests = new IstioCertificateRequest[accounts];
        for (var i = 0; i < accounts; i++)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var id = new SpiffeId(TrustDomain, "bench", $"sa-{i}");
            var csr = new CertificateRequest(new X500DistinguishedName(""), key, HashAlgorithmName.SHA256);
            var san = new SubjectAlternativeNameBuilder();
            san.AddUri(id.ToUri());
            csr.CertificateExtensions.Add(san.Build());
            requests[i] = new IstioCertificateRequest { Csr = csr.CreateSigningRequestPem(), Metadata = new Struct() };
            requests[i].Metadata.Fields[CertificateService.ImpersonatedIdentityKey] = Value.ForString(id.ToString());
        }

        var headers = new Metadata { { "authorization", "Bearer " + token } };
        var issued = 0L;
        var failed = 0L;
        using var stop = new CancellationTokenSource();
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var warm = 0;
        var callers = Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            using var channel = GrpcChannel.ForAddress($"https://localhost:{ca.Endpoint.Port}", new GrpcChannelOptions
            {
                HttpHandler = new SocketsHttpHandler
                {
                    SslOptions = new System.Net.Security.SslClientAuthenticationOptions
                    {
                        TargetHost = "localhost",
                        RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is X509Certificate2 served && ChainsTo(served, root),
                    },
                },
            });
            var service = new IstioCertificateService.IstioCertificateServiceClient(channel);
            // A first request per caller outside the clock: the TLS handshake and the JIT are not the steady rate.
            await service.CreateCertificateAsync(requests[c % accounts], headers, deadline: DateTime.UtcNow.AddSeconds(60));
            if (Interlocked.Increment(ref warm) == clients)
            {
                start.TrySetResult();
            }

            await start.Task;
            for (var n = c; !stop.IsCancellationRequested; n += clients)
            {
                try
                {
                    await service.CreateCertificateAsync(requests[n % accounts], headers, deadline: DateTime.UtcNow.AddSeconds(30));
                    Interlocked.Increment(ref issued);
                }
                catch (RpcException)
                {
                    Interlocked.Increment(ref failed);
                }
            }
        })).ToArray();
        await start.Task.WaitAsync(TimeSpan.FromMinutes(2));
        var watch = Stopwatch.StartNew();
        await Task.Delay(duration);
        await stop.CancelAsync();
        var count = Interlocked.Read(ref issued);
        var elapsed = watch.Elapsed.TotalSeconds;
        await Task.WhenAll(callers);
        if (Interlocked.Read(ref failed) > 0)
        {
            Console.WriteLine($"ca issue rate: {failed} requests failed");
        }

        return count / elapsed;
    }

    /// <summary>Seconds from an identity manager's start, told of N local service accounts, until it holds all their certificates.</summary>
    private static async Task<double> AgentStartAsync(CaServer ca, string tokenFile, string bundle, int accounts)
    {
        var ids = Enumerable.Range(0, accounts).Select(i => new SpiffeId(TrustDomain, "bench", $"sa-{i}")).ToList();
        var watch = Stopwatch.StartNew();
        var service = new CaServiceOptions(new Uri($"https://127.0.0.1:{ca.Endpoint.Port}"), null, null) { TokenPath = tokenFile };
        using var identities = IdentityManager.Start(new IdentityOptions(TrustDomain, null, new CaServiceClient(service))
        {
            TrustBundlePath = bundle,
            IssuanceWait = TimeSpan.FromSeconds(60),
        });
        identities.SetAllowed(ids);
        await Task.WhenAll(ids.Select(id => identities.GetAsync(id).AsTask()));
        return watch.Elapsed.TotalSeconds;
    }

    private static bool ChainsTo(X509Certificate2 leaf, X509Certificate2 root)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(root);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(leaf);
    }

    private static V1Pod Pod(string ns, string name, string serviceAccount) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new V1PodSpec { NodeName = "node1", ServiceAccountName = serviceAccount, Containers = [new V1Container { Name = "app", Image = "example/app:1" }] },
        Status = new V1PodStatus { Phase = "Running" },
    };
}
