using System.Net;
using System.Text;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Weft.Ca;

/// <summary>
/// What agents read to follow the CA: every root they must trust (both during a rotation) and the root the CA
/// signs with now, each PEM. An agent renews early a certificate that does not chain to <see cref="SigningRootPem"/>.
/// </summary>
internal sealed record PublishedTrustBundle(string RootsPem, string SigningRootPem)
{
    /// <summary>The file (and ConfigMap key) of all roots, as istio-ca-root-cert names it.</summary>
    public const string RootsKey = "root-cert.pem";

    /// <summary>The file (and ConfigMap key) of the root the CA signs with now.</summary>
    public const string SigningRootKey = "signing-root.pem";

    public static PublishedTrustBundle Of(CaSigner signer) => new(
        string.Concat(signer.Authority.TrustBundle.Select(r => r.ExportCertificatePem() + "\n")),
        signer.Root.ExportCertificatePem() + "\n");
}

/// <summary>Where the CA publishes its trust bundle: a ConfigMap (Kubernetes) or a directory (standalone).</summary>
internal interface ITrustBundlePublisher
{
    string Description { get; }

    /// <summary>Writes <paramref name="bundle"/> unless it is there already; true when something was written. Throws on failure.</summary>
    Task<bool> PublishAsync(PublishedTrustBundle bundle, CancellationToken cancellationToken);
}

/// <summary>Standalone: <c>DIR/root-cert.pem</c> and <c>DIR/signing-root.pem</c>, each replaced atomically (rename).</summary>
internal sealed class DirectoryTrustBundlePublisher(string directory) : ITrustBundlePublisher
{
    public string Description => $"directory {directory}";

    public Task<bool> PublishAsync(PublishedTrustBundle bundle, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(directory);
        // The roots first: an agent that reads between the two writes trusts the new root before it is told it signs.
        var wrote = Write(PublishedTrustBundle.RootsKey, bundle.RootsPem);
        wrote |= Write(PublishedTrustBundle.SigningRootKey, bundle.SigningRootPem);
        return Task.FromResult(wrote);
    }

    private bool Write(string name, string contents)
    {
        var path = Path.Combine(directory, name);
        if (File.Exists(path) && File.ReadAllText(path) == contents)
        {
            return false;
        }

        var temp = path + ".tmp";
        File.WriteAllText(temp, contents, Encoding.ASCII);
        File.Move(temp, path, overwrite: true);
        return true;
    }
}

/// <summary>
/// Kubernetes: a ConfigMap (default <c>weft-system/weft-ca-root-cert</c>) with the keys <c>root-cert.pem</c> and
/// <c>signing-root.pem</c>, created when missing and replaced when different. Agents mount it as a volume; kubelet
/// updates the files in place. Several CA replicas write the same contents, so their writes agree.
/// </summary>
internal sealed class ConfigMapTrustBundlePublisher(IKubernetes client, string @namespace, string name) : ITrustBundlePublisher
{
    public string Description => $"ConfigMap {@namespace}/{name}";

    public async Task<bool> PublishAsync(PublishedTrustBundle bundle, CancellationToken cancellationToken)
    {
        var data = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [PublishedTrustBundle.RootsKey] = bundle.RootsPem,
            [PublishedTrustBundle.SigningRootKey] = bundle.SigningRootPem,
        };
        V1ConfigMap? current;
        try
        {
            current = await client.CoreV1.ReadNamespacedConfigMapAsync(name, @namespace, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            current = null;
        }

        if (current is null)
        {
            await client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap
            {
                Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = @namespace, Labels = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "weft-ca" } },
                Data = data,
            }, @namespace, cancellationToken: cancellationToken).ConfigureAwait(false);
            return true;
        }

        if (current.Data is { } held && held.Count == data.Count && data.All(d => held.TryGetValue(d.Key, out var value) && value == d.Value))
        {
            return false;
        }

        // resourceVersion makes the replace conditional: a concurrent writer's change is read again, not lost.
        current.Data = data;
        await client.CoreV1.ReplaceNamespacedConfigMapAsync(current, name, @namespace, cancellationToken: cancellationToken).ConfigureAwait(false);
        return true;
    }
}

/// <summary>
/// Keeps the published bundle equal to the CA's: written at start, after each signer change, and checked again
/// every <see cref="Recheck"/> (someone may have deleted or edited it). A failed write is retried with backoff
/// (1 s doubling to 30 s) and counted; the CA serves meanwhile.
/// </summary>
internal sealed class TrustBundlePublication : IDisposable
{
    private readonly ITrustBundlePublisher _publisher;
    private readonly CaService _service;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _changed = new(0, 1);
    private readonly Task _loop;
    private readonly TaskCompletionSource _firstAttempt = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TrustBundlePublication(ITrustBundlePublisher publisher, CaService service, TimeSpan? recheck = null)
    {
        _publisher = publisher;
        _service = service;
        Recheck = recheck ?? TimeSpan.FromSeconds(60);
        service.SignerChanged += _ => Poke();
        _loop = Task.Run(LoopAsync);
    }

    public TimeSpan Recheck { get; }

    /// <summary>Completes after the first write was tried (done or failed): a CA that says ready has published, when it could.</summary>
    public Task FirstAttempt => _firstAttempt.Task;

    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            _loop.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }

        _stop.Dispose();
    }

    private void Poke()
    {
        try
        {
            _changed.Release();
        }
        catch (SemaphoreFullException)
        {
        }
    }

    private async Task LoopAsync()
    {
        var failures = 0;
        while (!_stop.IsCancellationRequested)
        {
            var bundle = PublishedTrustBundle.Of(_service.Signer);
            TimeSpan wait;
            try
            {
                if (await _publisher.PublishAsync(bundle, _stop.Token).ConfigureAwait(false))
                {
                    _service.Metrics.Published(ok: true);
                    Log.Info("ca", $"trust bundle published to {_publisher.Description}: {_service.Authority.TrustBundle.Count} root(s), signing root {_service.Root.Thumbprint}");
                }

                failures = 0;
                wait = Recheck;
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                _firstAttempt.TrySetResult();
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or IOException or UnauthorizedAccessException or OperationCanceledException)
            {
                failures++;
                _service.Metrics.Published(ok: false);
                wait = TimeSpan.FromSeconds(Math.Min(30, Math.Pow(2, Math.Min(failures - 1, 5))));
                var why = e is HttpOperationException http ? $"HTTP {(int?)http.Response?.StatusCode}: {http.Response?.Content}" : e.Message;
                Log.Warn("ca", $"publishing the trust bundle to {_publisher.Description} failed ({failures} attempt(s)), retrying in {wait.TotalSeconds:0}s: {why}");
            }

            _firstAttempt.TrySetResult();
            try
            {
                await _changed.WaitAsync(wait, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }
}
