package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pvc-project/pvc/broker/proto"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/trust"
)

// ErrEnrollRefused is returned when the master refused a request.
var ErrEnrollRefused = errors.New("enrollment refused")

// Enroll submits an enrollment request (enroll.Request.Encode) through the
// brokers of b, one after the other, until one brings the master's answer.
// The certificate is verified against b before it is returned; a refusal by
// the master is ErrEnrollRefused with the master's reason, and is final.
func Enroll(ctx context.Context, b *bundle.Bundle, request []byte, now func() time.Time) (*cert.Cert, error) {
	if now == nil {
		now = time.Now
	}
	var errs []error
	for _, br := range b.Brokers {
		c, err := enrollVia(ctx, b, br, request, now)
		if err == nil || errors.Is(err, ErrEnrollRefused) || ctx.Err() != nil {
			return c, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("enroll: %w", errors.Join(errs...))
}

func enrollVia(ctx context.Context, b *bundle.Bundle, br bundle.Broker, request []byte, now func() time.Time) (*cert.Cert, error) {
	s, err := dial(ctx, nil, br, proto.RoleEnrollee, b.Cluster, nil, nil, 4)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := proto.WriteMessage(s.conn, &proto.Enroll{Request: request}); err != nil {
		return nil, fmt.Errorf("broker %s: %w", br.Addr, err)
	}
	stop := context.AfterFunc(ctx, s.close)
	defer stop()
	for {
		m, err := proto.ReadMessage(s.conn)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("broker %s: %w", br.Addr, err)
		}
		switch m := m.(type) {
		case *proto.Ping, *proto.Pong:
			continue
		case *proto.Error:
			return nil, fmt.Errorf("broker %s: %w: %s", br.Addr, ErrRefused, m.Text)
		case *proto.EnrollResult:
			if m.Err != "" {
				return nil, fmt.Errorf("%w: %s", ErrEnrollRefused, m.Err)
			}
			c, err := trust.New(b).VerifyCert(m.Cert, now())
			if err != nil {
				return nil, fmt.Errorf("broker %s: %w: %w", br.Addr, ErrUnverified, err)
			}
			return c, nil
		default:
			return nil, fmt.Errorf("broker %s: unexpected %s", br.Addr, m.Type())
		}
	}
}
