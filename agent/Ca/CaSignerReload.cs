using Weft.Identity;

namespace Weft.Ca;

/// <summary>
/// Follows the CA's files (a Kubernetes Secret mounted as files, or files standalone): when their contents change
/// the CA loads them and signs with them from the next request, with no restart. An unusable change (a malformed
/// or mismatched key, a signer that does not chain to the bundle, a missing file) keeps the last good CA, logs one
/// error per distinct content and counts <c>weft_ca_signer_reloads_total{result="failed"}</c>. The files are
/// polled, not watched: a Secret volume swaps a symlinked directory, which a poll of the contents sees either way.
/// </summary>
internal sealed class CaSignerReload : IDisposable
{
    private readonly CaFiles _files;
    private readonly CaService _service;
    private readonly object _gate = new();
    private readonly ITimer _timer;
    private string? _lastFailed;

    public CaSignerReload(CaFiles files, CaService service, TimeSpan interval)
    {
        _files = files;
        _service = service;
        _timer = TimeProvider.System.CreateTimer(_ => Guarded(), null, interval, interval);
    }

    /// <summary>Reads the files now; true when a new CA was loaded and signs from now on.</summary>
    public bool Check()
    {
        lock (_gate)
        {
            var current = _service.Authority;
            var fingerprint = CertificateAuthority.FingerprintOf(_files);
            if (fingerprint == current.Fingerprint || (fingerprint is not null && fingerprint == _lastFailed))
            {
                return false;
            }

            CertificateAuthority next;
            try
            {
                next = CertificateAuthority.Load(_files);
            }
            catch (IdentityException e)
            {
                var key = fingerprint ?? "missing:" + e.Message;
                if (key != _lastFailed)
                {
                    _lastFailed = key;
                    _service.Metrics.SignerReloaded(ok: false);
                    Log.Error("ca", $"new CA files not used, still signing with {current.Signer.Subject} (root {_service.Root.Thumbprint}): {e.Message}");
                }

                return false;
            }

            _lastFailed = null;
            _service.Replace(next);
            _service.Metrics.SignerReloaded(ok: true);
            Log.Info("ca", $"CA files reloaded: signing with {next.Signer.Subject} (until {next.Signer.NotAfter.ToUniversalTime():u}, root {_service.Root.Thumbprint}), "
                + $"trust bundle of {next.TrustBundle.Count} root(s): {string.Join(", ", next.TrustBundle.Select(r => r.Thumbprint))}");
            return true;
        }
    }

    public void Dispose() => _timer.Dispose();

    private void Guarded()
    {
        try
        {
            Check();
        }
        catch (Exception e)
        {
            Log.Error("ca", $"checking the CA files failed: {e.GetType().Name}: {e.Message}");
        }
    }
}
