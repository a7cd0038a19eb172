using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace Weft.Tests.Identity;

/// <summary>What one TLS connection over loopback came to, seen from both ends.</summary>
internal sealed record TlsOutcome(bool Established, Exception? ServerError, Exception? ClientError, SslProtocols Protocol, SslApplicationProtocol ServerAlpn, SslApplicationProtocol ClientAlpn);

/// <summary>SslStream server and SslStream client over a real loopback TCP connection; after the handshake one byte each way.</summary>
internal static class LoopbackTls
{
    public static async Task<TlsOutcome> RunAsync(SslServerAuthenticationOptions serverOptions, SslClientAuthenticationOptions clientOptions)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var clientSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await clientSocket.ConnectAsync(listener.LocalEndPoint!);
        using var serverSocket = await listener.AcceptAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        await using var server = new SslStream(new NetworkStream(serverSocket, ownsSocket: false));
        await using var client = new SslStream(new NetworkStream(clientSocket, ownsSocket: false));

        var serverSide = Task.Run(async () =>
        {
            await server.AuthenticateAsServerAsync(serverOptions, timeout.Token);
            var buffer = new byte[1];
            if (await server.ReadAsync(buffer, timeout.Token) != 1)
            {
                throw new IOException("client closed before sending");
            }
            await server.WriteAsync(new byte[] { 2 }, timeout.Token);
            await server.FlushAsync(timeout.Token);
        });
        var clientSide = Task.Run(async () =>
        {
            await client.AuthenticateAsClientAsync(clientOptions, timeout.Token);
            await client.WriteAsync(new byte[] { 1 }, timeout.Token);
            await client.FlushAsync(timeout.Token);
            var buffer = new byte[1];
            if (await client.ReadAsync(buffer, timeout.Token) != 1)
            {
                throw new IOException("server closed before answering");
            }
        });

        // A refused handshake on one side must not leave the other waiting: the failing side hangs up.
        _ = serverSide.ContinueWith(_ => serverSocket.Close(), TaskContinuationOptions.OnlyOnFaulted);
        _ = clientSide.ContinueWith(_ => clientSocket.Close(), TaskContinuationOptions.OnlyOnFaulted);
        Exception? serverError = null;
        Exception? clientError = null;
        try
        {
            await serverSide;
        }
        catch (Exception e)
        {
            serverError = e;
        }
        try
        {
            await clientSide;
        }
        catch (Exception e)
        {
            clientError = e;
        }
        var established = serverError is null && clientError is null;
        return new TlsOutcome(established, serverError, clientError,
            established ? client.SslProtocol : SslProtocols.None,
            established ? server.NegotiatedApplicationProtocol : default,
            established ? client.NegotiatedApplicationProtocol : default);
    }
}

/// <summary>Collects what an onPeerVerified callback reported.</summary>
internal sealed class PeerReport
{
    public Weft.Identity.SpiffeId? Id { get; private set; }

    public string? Reason { get; private set; }

    public int Calls { get; private set; }

    public void Record(Weft.Identity.SpiffeId? id, string? reason)
    {
        Id = id;
        Reason = reason;
        Calls++;
    }
}
